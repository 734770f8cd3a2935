"""The on-device augmenting batch loader: a split kept whole on the training device as uint8."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from hiercls.data.loading import CIFAR100_MEAN, CIFAR100_STD
from hiercls.config import FLIP_MODES
from hiercls.data.splits import Split

__all__ = ["DeviceLoader"]


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that is a pure function of (seed, epoch)."""
    raw = hashlib.sha256(f"hiercls-loader:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(raw[:8], "little") & ((1 << 63) - 1)


class DeviceLoader:
    """Batches of one split kept whole on ``device``, with batched on-device augmentation.

    The split is stored once as uint8 [N, 3, H, W] on ``device`` (CIFAR: 150 MB for 50,000 images).
    :meth:`epoch` yields ``(images, labels)``: images float32 [B, 3, H, W] normalised with
    :data:`CIFAR100_MEAN` / :data:`CIFAR100_STD`, labels int64 [B], both on ``device``. The last
    partial batch is yielded too (unless ``drop_last``), so ``len(loader) = ceil(N / batch_size)``.

    With ``train=True`` every epoch is shuffled and every sample gets a random crop from the image
    zero-padded (black, before normalisation) by ``crop_padding`` pixels on each side, a horizontal
    flip (``flip``: ``random``, each image with probability 1/2 in every epoch; ``alternate``, image ``i``
    flipped in epoch ``k`` iff ``f_i XOR (k odd)`` with ``f_i`` one fair coin per image drawn once from
    ``seed``, so every image is flipped in exactly every other epoch (Jordan 2024, airbench's
    derandomised flip); ``none``) and, when ``cutout > 0``, Cutout (DeVries & Taylor 2017): a
    ``cutout`` x ``cutout`` square, centred uniformly in the image and clipped at its borders, set
    to zero after normalisation. Crop and flip are one batched gather, Cutout one batched mask;
    there is no per-sample Python loop. All random numbers of epoch ``k`` come from a CPU
    ``torch.Generator`` seeded from ``(seed, k)``, so the order and augmentation of an epoch are a
    pure function of ``(seed, k)`` (and the same on every device): a run resumed at epoch ``k`` sees
    exactly the batches it would have seen (whether the training numbers are then bit-exact depends on
    the device's kernels: see :mod:`hiercls.numerics`).
    With ``train=False`` the order is fixed and there is no augmentation.

    Args:
        split_or_images: a :class:`Split`, or uint8 images [N, 3, H, W] with ``labels``.
        labels: int64 [N] labels when ``split_or_images`` is a tensor; must be None for a Split.
        batch_size: images per batch (>= 1).
        device: where the data lives and batches are produced.
        train: shuffle and augment (True) or fixed order without augmentation (False).
        seed: augmentation / shuffling seed.
        crop_padding: zero padding in pixels for the random crop (0 disables cropping).
        flip: ``random``, ``alternate`` or ``none`` (True: ``random``, False: ``none``).
        cutout: Cutout square side in pixels (0 disables it).
        channels_last: return images in ``torch.channels_last`` memory format.
        drop_last: skip the last partial batch in training epochs (eval loaders never drop).

    Raises:
        TypeError: wrong image / label dtypes, or ``labels`` given together with a Split.
        ValueError: wrong shapes, an empty split, ``batch_size`` < 1, negative padding or cutout, an
            unknown ``flip``.
    """

    def __init__(
        self,
        split_or_images: Split | Tensor,
        labels: Tensor | None = None,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        train: bool,
        seed: int = 0,
        crop_padding: int = 4,
        flip: bool | str = True,
        cutout: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
    ) -> None:
        if isinstance(split_or_images, Split):
            if labels is not None:
                raise TypeError("pass labels only with an images tensor, not with a Split")
            images, labels = split_or_images.images, split_or_images.labels
        else:
            images = split_or_images
            if labels is None:
                raise TypeError("labels are required when the first argument is an images tensor")
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N={images.shape[0]}], got {tuple(labels.shape)}")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        if images.shape[0] == 0:
            raise ValueError("cannot make a loader over an empty split")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        flip = {True: "random", False: "none"}.get(flip, flip) if isinstance(flip, bool) else flip
        if flip not in FLIP_MODES:
            raise ValueError(f"flip={flip!r} is unknown; valid: {', '.join(FLIP_MODES)}")
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {crop_padding}, {cutout}")

        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_padding = int(crop_padding)
        self.flip_mode = flip
        self.flip = flip != "none"
        self.cutout = int(cutout)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last) and self.train
        self._mean = torch.tensor(CIFAR100_MEAN, device=self.device).mul(255.0).view(1, 3, 1, 1)
        self._std = torch.tensor(CIFAR100_STD, device=self.device).mul(255.0).view(1, 3, 1, 1)

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch: ceil(N / batch_size), or floor when ``drop_last``."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Eval loaders only (fixed order); training loaders need :meth:`epoch` with the epoch number."""
        if self.train:
            raise TypeError("iterate a training DeviceLoader with loader.epoch(k) so every epoch differs")
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of epoch ``epoch`` (>= 0): (float32 [B,3,H,W] normalised, int64 [B]) on ``device``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        n, bs = self.num_samples, self.batch_size
        if not self.train:
            for start in range(0, n, bs):
                x = self._layout(self._normalise(self.images[start : start + bs]))
                yield x, self.labels[start : start + bs]
            return

        _, _, h, w = self.images.shape
        p = self.crop_padding
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        # Fixed draw order, all on the CPU generator: order, crop offsets, flips, cutout centres.
        order = torch.randperm(n, generator=g)
        off_y = torch.randint(0, 2 * p + 1, (n,), generator=g)
        off_x = torch.randint(0, 2 * p + 1, (n,), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool() & self.flip
        if self.flip_mode == "alternate":  # the coins above are still drawn: the later draws stay the same
            flips = self.first_flips()[order] ^ bool(epoch % 2)
        cut_y = torch.randint(0, h, (n,), generator=g)
        cut_x = torch.randint(0, w, (n,), generator=g)
        order, off_y, off_x, flips, cut_y, cut_x = (
            t.to(self.device) for t in (order, off_y, off_x, flips, cut_y, cut_x)
        )
        rows_base = torch.arange(h, device=self.device)
        cols_base = torch.arange(w, device=self.device)
        cols_flip = cols_base.flip(0)
        channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        end = (n // bs) * bs if self.drop_last else n
        for start in range(0, end, bs):
            sl = slice(start, min(start + bs, end))
            idx = order[sl]
            batch = self.images[idx]  # uint8 [B,3,h,w]
            b = batch.shape[0]
            if p > 0 or self.flip:
                padded = F.pad(batch, (p, p, p, p)) if p > 0 else batch
                rows = off_y[sl, None] + rows_base  # [B,h]
                cols = off_x[sl, None] + torch.where(flips[sl, None], cols_flip, cols_base)  # [B,w]
                batch = padded[
                    torch.arange(b, device=self.device).view(b, 1, 1, 1),
                    channels,
                    rows.view(b, 1, h, 1),
                    cols.view(b, 1, 1, w),
                ]
            x = self._normalise(batch)
            if self.cutout > 0:
                y0 = cut_y[sl, None] - self.cutout // 2
                x0 = cut_x[sl, None] - self.cutout // 2
                in_rows = (rows_base >= y0) & (rows_base < y0 + self.cutout)  # [B,h]
                in_cols = (cols_base >= x0) & (cols_base < x0 + self.cutout)  # [B,w]
                x = x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
            yield self._layout(x), self.labels[idx]

    def first_flips(self) -> Tensor:
        """bool [N] on the CPU: which images ``flip="alternate"`` mirrors in even epochs (0, 2, ...), one
        fair coin per image drawn from ``seed`` alone; odd epochs mirror the others."""
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, -1))
        return torch.randint(0, 2, (self.num_samples,), generator=g).bool()

    def normalise(self, batch: Tensor) -> Tensor:
        """uint8 [B,3,H,W] on the loader's device -> float32 [B,3,H,W] standardised per channel with
        :data:`CIFAR100_MEAN` / :data:`CIFAR100_STD`, as every batch is (no augmentation, no layout)."""
        return self._normalise(batch)

    def _normalise(self, batch: Tensor) -> Tensor:
        """uint8 [B,3,H,W] -> float32 [B,3,H,W] standardised per channel."""
        return (batch.float() - self._mean) / self._std

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
