"""Optimisers, by the names of ``TrainConfig.optimizer``.

Each entry of :data:`~hiercls.registry.OPTIMIZERS` is ``fn(params, config) -> torch.optim.Optimizer``
and reads its hyperparameters from the config's fixed keys (``lr``, ``momentum``, ``weight_decay``,
``amsgrad``); the learning rate is then driven by the schedule every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hiercls.models import backbone_parameters, head_parameters
from hiercls.registry import OPTIMIZERS
from hiercls.schedules import LR_SCALE_KEY

if TYPE_CHECKING:
    from hiercls.config import TrainConfig

__all__ = ["OPTIMIZERS", "build_optimizer", "parameter_groups"]


@OPTIMIZERS.register("sgd")
def _sgd(params, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (``config.momentum``, default 0.9) and L2 weight decay."""
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )


@OPTIMIZERS.register("adamw")
def _adamw(params, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, ICLR 2019) with decoupled weight decay; ``config.amsgrad`` switch."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, amsgrad=config.amsgrad)


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict] | list[nn.Parameter]:
    """``model``'s parameters, as one group, or as two when ``config.lr_fc`` or ``config.weight_decay_fc`` is
    set: the backbone (``lr``, ``weight_decay``) and the head (``model.classifier``: the learning rate
    ``lr_fc``, as the factor ``lr_fc / lr`` on the schedule's rate, and ``weight_decay_fc``), as the reference
    code's ``--lr_fc`` and ``--weight_decay_fc``."""
    if config.lr_fc is None and config.weight_decay_fc is None:
        return list(model.parameters())
    head: dict = {"params": head_parameters(model)}
    if config.lr_fc is not None:
        head["lr"] = config.lr_fc
        head[LR_SCALE_KEY] = config.lr_fc / config.lr
    if config.weight_decay_fc is not None:
        head["weight_decay"] = config.weight_decay_fc
    return [{"params": backbone_parameters(model)}, head]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` over ``model``'s parameters (:func:`parameter_groups`); ValueError
    lists the valid names."""
    return OPTIMIZERS.get(config.optimizer)(parameter_groups(model, config), config)
