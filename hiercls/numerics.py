"""Numerics settings of a run: deterministic mode, IEEE fp32 evaluation, and a CPU check for ops that
CUDA cannot run deterministically.

Where bit-exact results hold (docs/training.md, "Reproducibility"): on the CPU always; on CUDA only with
``deterministic: true`` (:func:`deterministic_mode`), on the same GPU model, driver, CUDA, cuDNN and torch.
:func:`refused_ops` lets CI on a CPU-only machine check that every model, loss and metric avoids the ops
that ``torch.use_deterministic_algorithms(True)`` refuses on CUDA; ``benchmarks/gpu_check.py`` checks
determinism itself on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["REFUSED_ON_CUDA", "deterministic_mode", "ieee_fp32", "refused_ops"]

REFUSED_ON_CUDA: dict[str, str] = {
    "avg_pool3d_backward": "AvgPool3d backward",
    "_adaptive_avg_pool2d_backward": "AdaptiveAvgPool2d backward",
    "_adaptive_avg_pool3d_backward": "AdaptiveAvgPool3d backward",
    "adaptive_max_pool2d_backward": "AdaptiveMaxPool2d backward",
    "fractional_max_pool2d_backward": "FractionalMaxPool2d backward",
    "fractional_max_pool3d_backward": "FractionalMaxPool3d backward",
    "max_unpool2d": "MaxUnpool1d/2d",
    "max_unpool3d": "MaxUnpool3d",
    "upsample_linear1d_backward": "interpolate (linear) backward",
    "upsample_bilinear2d_backward": "interpolate (bilinear) backward",
    "upsample_bicubic2d_backward": "interpolate (bicubic) backward",
    "upsample_trilinear3d_backward": "interpolate (trilinear) backward",
    "reflection_pad1d_backward": "ReflectionPad1d backward",
    "reflection_pad2d_backward": "ReflectionPad2d backward",
    "reflection_pad3d_backward": "ReflectionPad3d backward",
    "nll_loss_forward": "NLLLoss (also inside F.cross_entropy)",
    "nll_loss2d_forward": "NLLLoss (2d)",
    "_ctc_loss_backward": "CTCLoss backward",
    "put_": "Tensor.put_",
    "put": "Tensor.put",
    "histc": "torch.histc",
    "grid_sampler_2d_backward": "grid_sample backward",
    "grid_sampler_3d_backward": "grid_sample backward",
}
"""aten ops that ``torch.use_deterministic_algorithms(True)`` refuses (RuntimeError) on CUDA tensors, by
the list in that function's documentation (torch 2.14); ``bincount`` with weights, ``median`` with
indices and ``scatter_reduce`` with ``prod`` are checked by their arguments in :func:`refused_ops`."""


@contextmanager
def deterministic_mode(on: bool, device: torch.device) -> Iterator[None]:
    """Within the block, torch's global numerics settings for one run; restored afterwards.

    ``on``: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set; cuBLAS reads it when its first
    handle is made, so set it before any CUDA work in the process to be sure), cuDNN benchmark off,
    ``cudnn.deterministic`` on and ``torch.use_deterministic_algorithms(True)``: an op without a
    deterministic implementation then raises instead of running (PyTorch's "Reproducibility" notes).
    ``off``: cuDNN benchmark on for CUDA runs (fixed input shapes: cuDNN times its kernels once and
    keeps the fastest, which may differ between runs), deterministic algorithms as they were.
    """
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn.benchmark, cudnn.deterministic = False, True
        torch.use_deterministic_algorithms(True)
    else:
        cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Within the block: no autocast and IEEE fp32 convolutions and matmuls (no TF32 on CUDA), so
    logits are the model's fp32 values on every device; settings restored afterwards."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in REFUSED_ON_CUDA:
            self.found[name] = REFUSED_ON_CUDA[name]
        elif name == "bincount" and (args[1:2] not in ((), (None,)) or kwargs.get("weights") is not None):
            self.found[name] = "torch.bincount with weights"
        elif name == "median" and func._overloadname.startswith("dim"):
            self.found[name] = "torch.median with indices"
        elif name.startswith("scatter_reduce") and "prod" in (*map(str, args), *map(str, kwargs.values())):
            self.found[name] = "scatter_reduce(prod)"
        return func(*args, **kwargs)


def refused_ops(fn: Callable[[], Any]) -> dict[str, str]:
    """Run ``fn()`` (on any device, typically the CPU) and return the aten ops it dispatched, forward and
    backward, that deterministic mode refuses on CUDA: ``{aten op name: what it is}`` (empty when none).

    Ops run by the autograd engine in other threads (CUDA backward) are not seen: call ``backward``
    on CPU tensors inside ``fn``.
    """
    recorder = _OpRecorder()
    with recorder:
        fn()
    return dict(recorder.found)
