"""Optimisers, by the names of ``TrainConfig.optimizer``.

Each entry of :data:`~hiercls.registry.OPTIMIZERS` is ``fn(params, config) -> torch.optim.Optimizer``
and reads its hyperparameters from the config's fixed keys (``lr``, ``momentum``, ``weight_decay``,
``amsgrad``); the learning rate is then driven by the schedule every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hiercls.registry import OPTIMIZERS

if TYPE_CHECKING:
    from hiercls.config import TrainConfig

__all__ = ["OPTIMIZERS", "build_optimizer"]


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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` over ``model``'s parameters (ValueError lists valid names)."""
    return OPTIMIZERS.get(config.optimizer)(model.parameters(), config)
