"""One source of truth: registry entries declare their parameters, and the training flags, the config keys,
the search-space checks, the search summary and the analysis columns follow from the declarations.
Also: no import cycle in hiercls/ or analysis/, and the offline analysis imports no Ray."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from hiercls.config import ConfigError, TrainConfig, param_keys
from hiercls.registry import HIERARCHIES, LOSSES, MODELS, OPTIMIZERS, SCHEDULES, Param, Registry
from hiercls.train import build_parser

ROOT = Path(__file__).resolve().parents[1]
PARAM_KINDS = {"architecture": MODELS, "loss": LOSSES, "lr_schedule": SCHEDULES}


def _declared(registry: Registry) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for name in registry.names():
        out.update(registry.params(name))
    return out


# ---------------------------------------------------------------------------------------------- Param
def test_param_checks_type_and_bounds_with_open_and_closed_ends():
    p = Param("x", "float", 0.5, "a test value", low=0.0, low_open=True, high=1.0)
    assert p.range_text() == "(0.0, 1.0]" and p.check(1) == 1.0
    with pytest.raises(ValueError, match=r"x=0 is out of range; valid range \(0.0, 1.0\]"):
        p.check(0)
    with pytest.raises(ValueError, match=r"x='a' is not a number; valid: a number in \(0.0, 1.0\]"):
        p.check("a")
    with pytest.raises(ValueError, match="x=inf is not finite"):
        p.check(float("inf"))
    ints = Param("m", "ints", None, "epochs", low=0, low_open=True, unit="epochs", nullable=True)
    assert ints.check("60,120") == (60, 120) and ints.check(7) == (7,) and ints.check(None) is None
    with pytest.raises(ValueError, match="m entry 60.5 is not a whole epoch"):
        ints.check([60.5])
    with pytest.raises(ValueError, match=r"m entry 0 is out of range; valid range \(0, inf\)"):
        ints.check([0, 10])
    with pytest.raises(ValueError, match="a None default needs nullable=True"):
        Param("y", "float", None, "no default")
    with pytest.raises(ValueError, match="kind 'str' is unknown"):
        Param("y", "str", "a", "text")


def test_register_refuses_a_signature_that_differs_from_the_declaration():
    registry = Registry("thing", call_args=("hierarchy",))
    declared = (Param("k", "float", 1.0, "a parameter"),)
    with pytest.raises(TypeError, match=r"'k' has a default in the signature"):
        registry.register("a", params=declared)(lambda hierarchy, *, k=1.0: None)
    with pytest.raises(TypeError, match=r"takes \['j'\] but declares \['k'\]"):
        registry.register("b", params=declared)(lambda hierarchy, *, j: None)
    with pytest.raises(TypeError, match="'k' must be keyword-only"):
        registry.register("c", params=declared)(lambda hierarchy, k: None)
    registry.register("d", params=declared)(lambda hierarchy, *, k: k)
    with pytest.raises(ValueError, match="thing 'd' is already registered"):
        registry.register("d")(lambda hierarchy: None)
    with pytest.raises(ValueError, match="parameter 'k' is a int here but a float in d"):
        registry.register("e", params=(Param("k", "int", 1, "another"),))(lambda hierarchy, *, k: k)
    assert registry.check("d", {"k": 2}) == {"k": 2.0} and registry.defaults("d") == {"k": 1.0}
    with pytest.raises(ValueError, match="unknown parameter 'q' for thing 'd'; valid: k"):
        registry.check("d", {"q": 1})
    with pytest.raises(ValueError, match="unknown thing 'z'; valid: d"):
        registry.entry("z")


@pytest.mark.parametrize("registry", [HIERARCHIES, MODELS, LOSSES, SCHEDULES, OPTIMIZERS],
                         ids=lambda r: r.kind)
def test_every_entry_has_a_summary_and_documented_parameters(registry):
    assert len(registry) >= 2
    for name in registry.names():
        entry = registry.entry(name)
        assert entry.summary, f"{registry.kind} {name!r} has no docstring"
        for param in entry.params.values():
            assert param.help and param.source, (name, param.name)
            if param.default is not None:
                assert param.check(param.default) == param.default


def test_model_loss_and_schedule_parameter_names_are_distinct_from_each_other_and_the_fixed_keys():
    models, losses, schedules = set(_declared(MODELS)), set(_declared(LOSSES)), set(_declared(SCHEDULES))
    assert not losses & schedules and not models & (losses | schedules)
    assert not (models | losses | schedules) & set(TrainConfig.field_names())


# ---------------------------------------------------------------------------------------------- derived
def test_training_flags_are_the_declared_parameters_in_both_spellings():
    parser = build_parser()
    spellings = {s: a.dest for a in parser._actions for s in a.option_strings}
    for kind, registry in PARAM_KINDS.items():
        declared = _declared(registry)
        assert set(param_keys(kind)) == set(declared)
        for key, param in declared.items():
            assert spellings[f"--{key}"] == key
            assert spellings[f"--{key.replace('_', '-')}"] == key
            text = next(a.help for a in parser._actions if a.dest == key)
            assert param.help in text and ", ".join(registry.owners(key)) in text
    flags = {a.dest for a in parser._actions} & (set(_declared(LOSSES)) | set(_declared(SCHEDULES)))
    assert flags == set(_declared(LOSSES)) | set(_declared(SCHEDULES))


def test_normalize_is_one_declaration_shared_by_hxe_and_yolo_v2():
    # issue 22: yolo-v2 takes HXE's normalize switch, so its flag, config key, checks and docs come from
    # that one declaration
    assert LOSSES.owners("normalize") == ["hierarchical-cross-entropy", "yolo-v2"]
    assert LOSSES.params("yolo-v2")["normalize"] is LOSSES.params("hierarchical-cross-entropy")["normalize"]
    parser = build_parser()
    text = next(a.help for a in parser._actions if a.dest == "normalize")
    assert text.startswith("hierarchical-cross-entropy, yolo-v2: ") and "default: False" in text
    assert parser.parse_args(["--loss", "yolo-v2", "--normalize"]).normalize is True
    config = TrainConfig.from_dict({"loss": "yolo-v2", "normalize": True}).resolved()
    assert config.to_dict()["normalize"] is True
    with pytest.raises(ConfigError, match="normalize=.*does not take it"):
        TrainConfig.from_dict({"loss": "soft-labels", "normalize": True}).validate()
    page = (ROOT / "docs/reference/parameters.md").read_text()
    yolo = page.split("### `yolo-v2`")[1].split("##")[0]
    assert "| `normalize` | bool | `False` |" in yolo


def test_config_keys_are_the_fixed_keys_plus_the_declared_parameters():
    valid = TrainConfig.valid_keys()
    assert set(valid) == (set(TrainConfig.field_names()) | set(_declared(MODELS)) | set(_declared(LOSSES))
                          | set(_declared(SCHEDULES)))
    for kind, registry in PARAM_KINDS.items():
        declared = list(param_keys(kind))  # in registration order, as the engine writes them
        for name in registry.names():
            config = TrainConfig.from_dict({kind: name}).resolved()
            written = config.to_dict()
            keys = list(written)
            # every declared parameter right after the key naming the entry (null unless this one's)
            assert keys[keys.index(kind) + 1: keys.index(kind) + 1 + len(declared)] == declared
            defaults = registry.defaults(name)
            assert {k: written[k] for k in declared} == {
                k: _plain(defaults.get(k)) for k in declared}, name
            assert TrainConfig.from_dict(written) == config
    assert valid == list(TrainConfig().to_dict())


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_a_parameter_of_another_entry_or_out_of_its_bounds_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"beta=5.0 is set, but loss 'cross-entropy' does not take it"):
        TrainConfig.from_dict({"beta": 5}).validate()
    expected = r"loss 'soft-labels': beta=-1.0 is out of range; valid range \(0.0, inf\)"
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.from_dict({"loss": "soft-labels", "beta": -1}).validate()
    with pytest.raises(ConfigError, match=r"unknown key 'betta'"):
        TrainConfig.from_dict({"betta": 5})


def test_search_space_checks_follow_the_declarations():
    from hiercls.tune.spec import SearchSpec

    for kind, registry in PARAM_KINDS.items():
        for key, param in _declared(registry).items():
            owner = registry.owners(key)[0]
            other = next(n for n in registry.names() if key not in registry.params(n))
            value = param.default if param.default is not None else (
                [1] if param.kind == "ints" else [0.5] if param.kind == "floats" else 1)
            # the parameter under a branch of an entry that does not take it
            spec = SearchSpec.from_dict({
                "num_samples": 2, "epochs": 4, "grace_period": 1, "train": {kind: other, key: value},
            })
            problems, _ = spec.problems()
            assert any(f"train.{key}: a parameter the selected {kind} {other!r} does not take" in p
                       for p in problems), (key, problems)
            # a range beyond the declared lower bound (bounded numbers only)
            if param.kind == "float" and param.low is not None:
                spec = SearchSpec.from_dict({
                    "num_samples": 2, "epochs": 40, "grace_period": 30, "train": {kind: owner},
                    "search": {key: {"type": "uniform", "low": param.low - 1.0, "high": param.low + 1.0}},
                })
                problems, _ = spec.problems()
                assert any(f"low end of the ranges: {kind} {owner!r}: {key}=" in p and "out of range" in p
                           for p in problems), (key, problems)


def test_summary_and_analysis_columns_are_the_declared_parameters():
    from analysis.rank import _taken_keys
    from hiercls.tune.runner import format_table

    for kind, registry in (("loss", LOSSES), ("lr_schedule", SCHEDULES)):  # a model's, when searched: as any
        for name in registry.names():
            assert _taken_keys(name, "loss" if kind == "loss" else "schedule") == list(registry.params(name))
    assert _taken_keys("no-such-loss", "loss") == [] and _taken_keys(None, "schedule") == []
    assert format_table.__module__ == "hiercls.tune.runner"


# ---------------------------------------------------------------------------------------------- structure
def _import_graph() -> dict[str, set[str]]:
    """Module -> the hiercls/analysis modules it imports, function-local and TYPE_CHECKING imports counted."""
    modules: dict[str, Path] = {}
    for package in ("hiercls", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle_and_config_imports_no_torch_module():
    graph = _import_graph()
    assert len(graph) > 30 and "hiercls.config" in graph["hiercls.engine"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert graph["hiercls.config"] <= {"hiercls.registry", "hiercls.value_schedule"}, graph["hiercls.config"]
    assert graph["hiercls.value_schedule"] <= {"hiercls.registry"}, graph["hiercls.value_schedule"]
    assert graph["hiercls.registry"] == set()
    # the cycle finder finds a planted cycle
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_analysis_rank_imports_no_ray():
    # A subprocess on purpose: what a fresh interpreter imports for ``import analysis.rank`` (-X importtime);
    # in this process Ray, torch and optuna are already imported by other tests.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import analysis.rank"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "analysis.rank" in imported and "pandas" in imported
    assert not [m for m in imported if m == "ray" or m.startswith("ray.")]
    assert "torch" not in imported and "optuna" not in imported


# ---------------------------------------------------------------------------------------------- throwaway
class ThrowawayMarginLoss(torch.nn.Module):
    """Cross-entropy plus ``margin_x`` times the expected LCA distance of the prediction (test only)."""

    def __init__(self, hierarchy, *, margin_x):
        super().__init__()
        self.margin_x = margin_x
        d = hierarchy.distances.to(torch.float32)
        self.register_buffer("distance", d / d.max(), persistent=False)

    def set_epoch(self, epoch: float) -> None:
        pass

    def forward(self, logits, targets):
        logits = logits.float()
        expected = (F.softmax(logits, dim=1) * self.distance[targets]).sum(dim=1).mean()
        return F.cross_entropy(logits, targets) + self.margin_x * expected


@pytest.fixture
def throwaway_loss():
    """A loss with a parameter no module knows, registered for one test only."""
    LOSSES.register("throwaway-margin", params=(
        Param("margin_x", "float", 1.0, "weight of the expected LCA distance", low=0.0, source="this test"),
    ))(ThrowawayMarginLoss)
    yield "throwaway-margin"
    LOSSES.unregister("throwaway-margin")
    assert "throwaway-margin" not in LOSSES and "margin_x" not in param_keys("loss")


@pytest.mark.slow
@pytest.mark.realdata
def test_a_throwaway_loss_trains_searches_and_ranks_without_touching_any_module(
    throwaway_loss, cifar_dir, tmp_path, ray_session, capsys
):
    """Registering one decorated class is all it takes: the training flag (both spellings) and YAML key,
    the range and branch checks of the config and the search space, the resolved config.yaml, the search
    summary and the analysis columns all know ``margin_x``."""
    from analysis.experiment import load_experiment
    from analysis.rank import build_table
    from hiercls.train import main
    from hiercls.tune.runner import run_search
    from hiercls.tune.spec import SearchSpec, SpecError

    common = ["--data_path", str(cifar_dir), "--max-train-samples", "200", "--val-size", "100",
              "--epochs", "1", "--no-test", "--device", "cpu", "--batch_size", "50"]
    # train: the flag in its original and hyphenated spellings, the resolved config.yaml
    help_text = build_parser().format_help()
    assert "--margin_x MARGIN_X, --margin-x MARGIN_X" in help_text and "throwaway-margin" in help_text
    out = tmp_path / "run"
    assert main([*common, "--loss", throwaway_loss, "--margin-x", "0.5", "--out_folder", str(out)]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["loss"] == throwaway_loss and written["margin_x"] == 0.5 and written["alpha"] is None
    keys = list(written)
    assert keys.index("loss") < keys.index("margin_x") < keys.index("optimizer")
    history = json.loads((out / "all_epoch_results.json").read_text())
    assert history[0]["status"] == "ok" and history[0]["train_loss"] > 0
    out2 = tmp_path / "default"
    assert main([*common, "--loss", throwaway_loss, "--out_folder", str(out2)]) == 0
    assert yaml.safe_load((out2 / "config.yaml").read_text())["margin_x"] == 1.0
    capsys.readouterr()
    bad = ["--loss", throwaway_loss, "--margin_x", "-1", "--out_folder", str(tmp_path / "x")]
    assert main([*common, *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "margin_x=-1.0 is out of range; valid range [0.0, inf)" in err
    assert main([*common, "--margin_x", "1", "--out_folder", str(tmp_path / "y")]) == 2
    assert "margin_x=1.0 is set, but loss 'cross-entropy' does not take it" in capsys.readouterr().err

    # search: the branch and bound checks, the toy trainable, the summary and the analysis columns
    def space(branches: dict) -> dict:
        return {"name": "throwaway", "storage_path": str(tmp_path / "tune"), "num_samples": 4, "epochs": 2,
                "grace_period": 1, "max_concurrent": 2, "cpus_per_trial": 1, "startup_trials": 2,
                "train": {"architecture": "plainnet", "data_dir": str(cifar_dir)},
                "search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
                           "loss": {"type": "choice", "values": branches}}}

    with pytest.raises(SpecError, match="margin_x: a parameter of loss throwaway-margin, but this branch"):
        SearchSpec.from_dict(space({"cross-entropy": {"margin_x": {"type": "uniform", "low": 0, "high": 1}},
                                    throwaway_loss: {}})).validate()
    with pytest.raises(SpecError, match=r"margin_x=-0.5 is out of range; valid range \[0.0, inf\)"):
        SearchSpec.from_dict(space({throwaway_loss: {"margin_x": {"type": "uniform", "low": -0.5,
                                                                   "high": 1}}})).validate()
    values = space({"cross-entropy": {},
                    throwaway_loss: {"margin_x": {"type": "uniform", "low": 0.1, "high": 2.0}}})
    values["points_to_evaluate"] = [{"lr": 0.05, "loss": throwaway_loss, "margin_x": 0.5},
                                    {"lr": 0.05, "loss": "cross-entropy"}]
    spec = SearchSpec.from_dict(values)
    lines: list[str] = []
    outcome = run_search(spec, trainable="toy", echo=lines.append)
    assert outcome.num_trials == 4
    drawn = [r for r in outcome.rows if r["loss"] == throwaway_loss]
    assert drawn and all(0.1 <= r["params"]["margin_x"] <= 2.0 for r in drawn)
    summary = "\n".join(lines)
    assert any(f"{throwaway_loss} (margin_x=" in line for line in lines), summary
    table = build_table(load_experiment(Path(spec.storage_path) / spec.name))
    rows = table[table["loss"] == throwaway_loss]
    assert "margin_x" in table.columns and len(rows) == len(drawn)
    assert sorted(rows["margin_x"]) == pytest.approx(sorted(r["params"]["margin_x"] for r in drawn))
    assert table[table["loss"] == "cross-entropy"]["margin_x"].isna().all()


def test_a_run_loads_its_hierarchy_once_and_builds_its_loss_once(tiny_run, cifar, monkeypatch):
    import hiercls.build as build
    from hiercls.engine import fit

    calls = {"hierarchy": 0, "loss": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(build, "load_cifar100_hierarchy", counted("hierarchy", build.load_cifar100_hierarchy))
    monkeypatch.setattr(build, "build_loss", counted("loss", build.build_loss))
    result = fit(tiny_run(loss="hierarchical-cross-entropy", alpha=0.3), data=cifar)
    assert result["status"] == "ok" and calls == {"hierarchy": 1, "loss": 1}
