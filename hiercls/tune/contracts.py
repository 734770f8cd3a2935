"""What hiercls relies on in Ray Tune and Optuna beyond their public APIs, named and checked.

``pyproject.toml`` pins Ray and Optuna to the releases these were checked against. Each :class:`Contract`
names one private attribute, file name or behaviour and what uses it, and checks it without starting Ray;
a search refuses a release that breaks one (one line, exit 2), and ``tests/test_contracts.py`` fails.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pickle
from collections.abc import Callable

from hiercls.tune.guard import GUARDED_LOGGERS, RAY_RESUME_HINT

__all__ = ["CONTRACTS", "Contract", "ContractError", "broken_contracts", "check_contracts"]


class ContractError(RuntimeError):
    """The installed Ray or Optuna lacks something hiercls relies on (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Contract:
    """One thing hiercls relies on: ``name`` (what it is), ``used_for`` (where and why), ``check``
    (raises when the installed release breaks it)."""

    name: str
    used_for: str
    check: Callable[[], None]


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _source_has(path: str, *texts: str) -> None:
    """Every one of ``texts`` is in the source of ``path`` (``module`` or ``module:Class.function``)."""
    module, _, name = path.partition(":")
    target: object = importlib.import_module(module)
    for part in name.split(".") if name else ():
        target = getattr(target, part)
    source = inspect.getsource(target)
    for text in texts:
        _require(text in source, f"{text!r} not found in {path}")


def _frozen_trial_id() -> None:
    import optuna

    trial = optuna.trial.create_trial(params={}, distributions={}, value=0.0)
    _require(isinstance(getattr(trial, "_trial_id", None), int), "FrozenTrial has no int _trial_id")
    _require(list(inspect.signature(optuna.trial.Trial).parameters)[:2] == ["study", "trial_id"],
             "optuna.trial.Trial(study, trial_id) changed")


def _nsga2_pickles() -> None:
    from hiercls.tune.space import PicklableNSGAIISampler  # Ray and Optuna stay out of --help and --check

    pickle.loads(pickle.dumps(PicklableNSGAIISampler(seed=0)))


def _state_file_names() -> None:
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl import tuner_internal
    from ray.tune.search import Searcher
    from ray.tune.search.search_generator import SearchGenerator

    found = (tuner_internal._TUNER_PKL, TuneController.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL,
             SearchGenerator.CKPT_FILE_TMPL, CallbackList.CKPT_FILE_TMPL)
    expected = ("tuner.pkl", "experiment_state-{}.json", "searcher-state-{}.pkl", "search_gen_state-{}.json",
                "callback-states-{}.pkl")
    _require(found == expected, f"Ray's state files are {found}, not {expected}")


def _trial_files() -> None:
    from ray.air import constants
    from ray.train._internal.storage import StorageContext

    _require((constants.EXPR_ERROR_PICKLE_FILE, constants.EXPR_ERROR_FILE) == ("error.pkl", "error.txt"),
             "a trial's error files are no longer error.pkl / error.txt")
    _require(StorageContext._make_checkpoint_dir_name(3) == "checkpoint_000003",
             "checkpoint folders are no longer checkpoint_NNNNNN")


def _trial_storage() -> None:
    from ray.tune.experiment import Trial

    _require(callable(getattr(Trial, "set_storage", None)), "Trial.set_storage is gone")
    _source_has("ray.train._internal.storage:StorageContext.__init__", "self.storage_fs_path",
                "self.experiment_dir_name")
    _source_has("ray.tune.search.search_generator:SearchGenerator.set_state", 'state["experiment"]')
    _source_has("ray.tune.experiment.config_parser", 'storage=spec.get("storage")')


def _raylet_config() -> None:
    from ray._raylet import Config

    _require(callable(getattr(Config, "initialize", None)), "ray._raylet.Config.initialize is gone")


def _pb2_hook() -> None:
    from ray.tune.schedulers.pb2 import PB2

    parameters = list(inspect.signature(PB2.on_trial_result).parameters)
    _require(parameters == ["self", "tune_controller", "trial", "result"],
             f"PB2.on_trial_result takes {parameters}")
    _require("synch" in inspect.signature(PB2).parameters, "PB2 takes no synch")


def _ray_resume_hint() -> None:
    # Ray's source writes it as two f-strings: "... the most recent state was " "saved.\nResume ..."
    _source_has("ray.tune.tune:run", RAY_RESUME_HINT.removesuffix("saved."), "saved.\\nResume experiment")


_CONTROLLER = "ray.tune.execution.tune_controller:TuneController"
CONTRACTS = tuple(Contract(*row) for row in (
    ("optuna FrozenTrial._trial_id and Trial(study, trial_id)",
     "hiercls.tune.space.SearchAlgorithm.restore rebuilds the trials that were running", _frozen_trial_id),
    ("NSGAIISampler pickles once its _thread_lock is left out",
     "hiercls.tune.space.PicklableNSGAIISampler: Ray pickles the searcher", _nsga2_pickles),
    ("Ray's state file names (tuner.pkl, experiment_state-*.json, searcher-state-*.pkl, ...)",
     "hiercls.experiment.state, guard (trust and torn-state checks), atomicfs (fsynced), plan.restorable",
     _state_file_names),
    ("experiment_state-*.json holds trial_data and runner_data; a failed restore logs 'Failed to restore the "
     "run state'", "hiercls.experiment.state.read_trial_states, guard.check_state_intact and ray_log_guard",
     lambda: (_source_has(_CONTROLLER + ".save_to_dir", '"trial_data"', '"runner_data"'),
              _source_has(_CONTROLLER + ".__init__", "Failed to restore the run state"))),
    ("a trial's error.pkl / error.txt and checkpoint_NNNNNN folders",
     "hiercls.tune.atomicfs (a torn error.pkl reads as missing; checkpoint deletion waits)", _trial_files),
    ("the loggers whose records carry trial and upload failures",
     "hiercls.tune.guard.ray_log_guard (a full disk stops the search)",
     lambda: [importlib.import_module(name) for name in GUARDED_LOGGERS]),
    ("after an interrupt, ray.tune.tune logs 'Experiment has been interrupted, but the most recent state was "
     "saved. Resume experiment with: Tuner.restore(...)'",
     "hiercls.tune.guard.ray_log_guard (drops it: hiercls prints its own --resume command)",
     _ray_resume_hint),
    ("Tuner.fit turns SIGUSR1 into 'save the state and stop'",
     "hiercls.tune.runner.interrupt_tune (a storage failure stops the search)",
     lambda: _source_has("ray.tune.tune", "SIGUSR1", "signal_interrupt_tune_run")),
    ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S",
     "hiercls.tune.runner: the warning about a snapshot every epoch is turned off",
     lambda: _source_has("ray.tune.execution.experiment_state",
                         "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")),
    ("Trial.set_storage, StorageContext.storage_fs_path/experiment_dir_name; a restored generator's new "
     "trials take the saved experiment's storage", "hiercls.tune.space.RelocatingSearchGenerator and "
     "RelocatingVariantGenerator (a copied or moved experiment's new trials live in it)", _trial_storage),
    ("Optuna's journal file lock is the journal's name + '.lock'",
     "hiercls.tune.runner: a resume removes a killed driver's stale lock (no 30 s wait)",
     lambda: _source_has("optuna.storages.journal._file", 'LOCK_FILE_SUFFIX = ".lock"')),
    ("ray._raylet.Config.initialize", "hiercls.tune.cluster.enable_cluster_token re-reads RAY_AUTH_MODE",
     _raylet_config),
    ("PB2.on_trial_result(tune_controller, trial, result) and PB2(synch=...)",
     "hiercls.tune.space.PB2UntilLastEpoch", _pb2_hook),
))
"""Every internal hiercls relies on, in the order :func:`broken_contracts` checks them."""


def broken_contracts() -> list[str]:
    """One line per contract the installed Ray or Optuna breaks: its name, what hiercls uses it for and
    what is wrong (empty when all hold)."""
    out = []
    for contract in CONTRACTS:
        try:
            contract.check()
        except Exception as err:  # noqa: BLE001 - any failure of a check means the contract is broken
            out.append(f"{contract.name} (used by {contract.used_for}): {type(err).__name__}: {err}")
    return out


def check_contracts() -> None:
    """Refuse an installed Ray or Optuna that breaks a contract.

    Raises:
        ContractError: naming the first broken contract, the installed versions and the way out.
    """
    broken = broken_contracts()
    if not broken:
        return
    import optuna
    import ray

    more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
    raise ContractError(f"this Ray {ray.__version__} / Optuna {optuna.__version__} breaks what hiercls "
                        f"relies on: {broken[0]}{more}; install the tested versions: pip install -e .")
