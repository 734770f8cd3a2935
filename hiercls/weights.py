"""Training options that act on a model's weights: an exponential moving average of the weights
(``ema_decay``) and the data-dependent patch-whitening initialisation of the first convolution
(``whiten_init``). Both are general: they apply to every registered model.

Sources: the moving average of the weights is Polyak & Juditsky's averaging in its exponential form, with
the warm-up of TensorFlow's ``tf.train.ExponentialMovingAverage(num_updates=...)``; the whitening
initialisation is that of Jordan's airbench ("94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
arXiv:2404.00498, 2024), re-derived here for any first convolution.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hiercls.models import first_conv

__all__ = [
    "WHITEN_EPS", "WHITEN_IMAGES", "WeightAverage", "ema_decay_at", "patch_whitening", "whiten_first_conv",
]

WHITEN_EPS = 5e-4
"""Added to every eigenvalue before its inverse square root (airbench's value), in (normalised pixel)^2."""
WHITEN_IMAGES = 5000
"""How many training images (the first of the training split) the patch covariance is estimated from."""


def ema_decay_at(decay: float, step: int) -> float:
    """The decay used by the ``step``-th update (0-based): ``min(decay, (1 + step) / (10 + step))``.

    The warm-up (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) keeps the first updates
    from averaging in the initial weights for hundreds of steps: 0.1 at step 0, 0.5 at step 8, 0.9 at
    step 80.
    """
    return min(float(decay), (1.0 + step) / (10.0 + step))


class WeightAverage:
    """An exponential moving average of a model's weights, kept in a copy of the model.

    After every optimiser step :meth:`update` sets, for every floating-point entry ``w`` of the model's
    ``state_dict`` (parameters and BatchNorm running statistics), ``avg = d * avg + (1 - d) * w`` with
    ``d = ema_decay_at(decay, t)`` at the ``t``-th update; integer entries (``num_batches_tracked``) are
    copied. :attr:`module` is the averaged model, evaluated in place of the trained one.

    Args:
        model: the trained model (its current weights start the average).
        decay: in ``(0, 1)``, per optimiser step.

    Raises:
        ValueError: ``decay`` outside ``(0, 1)``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema_decay={decay!r} is out of range; valid: in (0, 1)")
        self.decay = float(decay)
        self.step = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (one optimiser step's update)."""
        d = ema_decay_at(self.decay, self.step)
        averaged = self.module.state_dict()
        for key, value in model.state_dict().items():
            target = averaged[key]
            if target.is_floating_point():
                target.lerp_(value.detach(), 1.0 - d)
            else:
                target.copy_(value)
        self.step += 1

    def reset(self, model: nn.Module) -> None:
        """Start the average anew from ``model``'s weights (step 0)."""
        self.module.load_state_dict(model.state_dict())
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, "weights": the averaged model's state_dict}`` (checkpointed in ``last.pth``)."""
        return {"step": self.step, "weights": self.module.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly from :meth:`state_dict`."""
        self.module.load_state_dict(state["weights"])
        self.step = int(state["step"])


def patch_whitening(images: Tensor, kernel: int, pairs: int, eps: float = WHITEN_EPS) -> Tensor:
    """Patch-whitening filters from normalised images (Jordan 2024, airbench's ``init_whitening_conv``).

    The ``kernel x kernel`` patches of every image (all positions, no padding) are flattened to
    ``d = C * kernel^2`` values; with the eigen-decomposition ``Sigma = V diag(lambda) V^T`` of their
    covariance, filter ``i`` is ``v_i / sqrt(lambda_i + eps)`` for the ``pairs`` largest eigenvalues,
    followed by the same filters negated (after a GELU or ReLU both signs of a direction survive).
    Applied to a patch, the first ``pairs`` filters give its decorrelated coordinates of unit variance.

    Args:
        images: float ``[N, C, H, W]``, normalised as the model sees them.
        kernel: the filters' side in pixels.
        pairs: how many eigen-directions, ``1 <= pairs <= d``.
        eps: added to each eigenvalue.

    Returns:
        float32 ``[2 * pairs, C, kernel, kernel]``.

    Raises:
        ValueError: ``pairs`` outside ``1..d`` or images smaller than the kernel.
    """
    n, c, h, w = images.shape
    d = c * kernel * kernel
    if not 1 <= pairs <= d:
        raise ValueError(f"pairs={pairs} is out of range; valid: 1..{d} (channels x kernel^2)")
    if h < kernel or w < kernel:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the {kernel}x{kernel} kernel")
    x = images.double()
    patches = x.unfold(2, kernel, 1).unfold(3, kernel, 1)  # [N, C, H', W', k, k]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))  # ascending
    order = torch.argsort(eigenvalues, descending=True)[:pairs]
    filters = eigenvectors[:, order].T / torch.sqrt(eigenvalues[order].clamp_min(0) + eps)[:, None]
    filters = filters.reshape(pairs, c, kernel, kernel)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: Tensor) -> nn.Conv2d:
    """Set the first convolution's filters to :func:`patch_whitening` of ``images`` and freeze them.

    The convolution's ``2 * min(out_channels // 2, d)`` first filters become the whitening filters (``d``
    = in_channels x kernel^2; ``speednet``'s 24 filters hold all 12 directions of a 2x2 RGB patch, a
    3x3 stem of 64 filters holds 27 of them, WRN's 16 filters the 8 leading ones); any filters beyond keep
    their initialisation. The weight is then frozen (``requires_grad = False``: no gradient, no weight
    decay, as airbench freezes it); a bias keeps training.

    Args:
        model: any registered model.
        images: float ``[N, C, H, W]`` normalised training images (:data:`WHITEN_IMAGES` of them).

    Returns:
        the convolution it set.

    Raises:
        ValueError: no convolution, a first convolution that is grouped, has a non-square kernel or
            another number of input channels than the images, or fewer than 2 filters.
    """
    conv = first_conv(model)
    k = conv.kernel_size[0]
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.in_channels != images.shape[1] or conv.groups != 1:
        raise ValueError(f"whiten_init needs a first convolution over the {images.shape[1]} image channels "
                         f"with a square kernel; {type(model).__name__}'s is {conv}")
    if conv.out_channels < 2:
        raise ValueError(f"whiten_init needs at least 2 filters in the first convolution; it has "
                         f"{conv.out_channels}")
    pairs = min(conv.out_channels // 2, conv.in_channels * k * k)
    filters = patch_whitening(images, k, pairs)
    conv.weight[: filters.shape[0]].copy_(filters.to(conv.weight.device, conv.weight.dtype))
    conv.weight.requires_grad_(False)
    return conv
