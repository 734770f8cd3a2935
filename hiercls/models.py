"""CIFAR-sized (32x32 input) classification networks, built by name through :data:`MODELS`.

Every model maps float32 images [B, 3, 32, 32] to logits float32 [B, num_classes].

Registered names: ``plainnet`` (Plain-11), ``resnet18`` (alias ``ResNet18``), ``wrn28-10``, ``speednet``
(a speedrun-class network with declared ``width`` and ``depth``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hiercls.registry import MODELS, Param

__all__ = [
    "MODELS", "GlobalAvgPool", "PlainNet11", "PreActWideResNet", "ResNetCifar", "SpeedNet",
    "backbone_parameters", "build_model", "count_parameters", "first_conv", "head_parameters",
]

def build_model(
    name: str,
    num_classes: int = 100,
    *,
    use_2fc: bool = False,
    fc_inner_dim: int = 1024,
    use_fc_batchnorm: bool = False,
    **params: object,
) -> nn.Module:
    """Build the registered model ``name`` (or an alias) with ``num_classes`` outputs and its declared
    ``params`` (``speednet``'s ``width``, ``depth``; a parameter not given takes its declared default).

    ``num_classes`` is the number of outputs: the class count for the classification losses, the
    embedding's dimension for the embedding losses, the non-root node count for ``yolo-v2``. Every model
    ends in a linear layer ``classifier``: its *head*; everything else is its *backbone*
    (:func:`head_parameters`). With ``use_2fc`` the head is two linear layers, ``Linear(features,
    fc_inner_dim) -> ReLU [-> BatchNorm1d with use_fc_batchnorm] -> Linear(fc_inner_dim, num_classes)``, as
    the reference code of Bertinetto et al. builds it for its embedding runs (``--use_2fc``,
    ``--fc_inner_dim``, ``--use_fc_batchnorm``).

    Raises:
        ValueError: unknown name (the message lists the registered ones), a parameter the model does not
            declare or out of its range, ``num_classes`` < 1, ``fc_inner_dim`` < 1, or
            ``use_fc_batchnorm`` without ``use_2fc``.
    """
    factory = MODELS.get(name)
    params = MODELS.check(name, params)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if use_fc_batchnorm and not use_2fc:
        raise ValueError("use_fc_batchnorm needs use_2fc (the batch norm sits between the two linear layers)")
    if fc_inner_dim < 1:
        raise ValueError(f"fc_inner_dim must be >= 1, got {fc_inner_dim}")
    model = factory(num_classes=num_classes, **params)
    if use_2fc:
        features = model.classifier.in_features
        layers: list[nn.Module] = [nn.Linear(features, fc_inner_dim), nn.ReLU(inplace=True)]
        if use_fc_batchnorm:
            layers.append(nn.BatchNorm1d(fc_inner_dim))
        layers.append(nn.Linear(fc_inner_dim, num_classes))
        model.classifier = nn.Sequential(*layers)
        _init_weights(model.classifier)
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model.classifier`` (the head: one or two linear layers)."""
    return list(model.classifier.parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` outside its head, in ``model.parameters()`` order."""
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of ``model`` in ``model.modules()`` order: the one the images meet first in
    every registered model (its stem).

    Raises:
        ValueError: the model has no convolution.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no convolution to initialise")
    return conv


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for conv / linear weights (fan_out for convs), zero biases, BN = identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GlobalAvgPool(nn.Module):
    """Global average pooling [B, C, H, W] -> [B, C] as a mean over the spatial dimensions.

    Equal to ``nn.AdaptiveAvgPool2d(1)`` followed by ``flatten(1)``, but its backward is a plain
    broadcast, which CUDA runs deterministically; ``AdaptiveAvgPool2d``'s CUDA backward is refused by
    ``torch.use_deterministic_algorithms(True)`` (see its documentation). The mean is taken in the
    input's dtype (fp32 accumulation inside the reduction kernel).
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------------
# Plain-11
# --------------------------------------------------------------------------------------------------


class PlainNet11(nn.Module):
    """Plain-11, the CIFAR network of Barz & Denzler.

    References: B. Barz and J. Denzler, "Deep Learning is not a Matter of Depth but of Good
    Training", ICPRAI 2018 (where Plain-11 is introduced), and "Hierarchy-based Image Embeddings for
    Semantic Image Retrieval", WACV 2019 (which uses it for CIFAR-100); the layout follows their
    Keras code (github.com/cvjena/semantic-embeddings, ``PlainNet`` with its default ``filters``),
    re-written here in PyTorch:

    * 3x3 "same" convolutions with 64, 64 | avg-pool 2 | 128, 128, 128 | avg-pool 2 |
      256, 256, 256 | avg-pool 2 | 512 channels, each conv followed by ReLU and then batch norm
      (their order: activation before BN; the conv keeps its bias, as in Keras);
    * global average pooling, a 512-unit fully-connected layer with ReLU then batch norm;
    * a linear output layer (9 conv + 2 fc = 11 weight layers).

    Their L2 weight decay of 5e-4 belongs to the optimiser here, not the model.
    """

    LAYOUT: tuple[int | str, ...] = (64, 64, "ap", 128, 128, 128, "ap", 256, 256, 256, "ap", 512)

    def __init__(self, num_classes: int = 100, fc_width: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in self.LAYOUT:
            if item == "ap":
                layers.append(nn.AvgPool2d(2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(item)]
                in_ch = item
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.embedding = nn.Sequential(
            nn.Linear(in_ch, fc_width), nn.ReLU(inplace=True), nn.BatchNorm1d(fc_width)
        )
        self.classifier = nn.Linear(fc_width, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """float32 [B, 3, H, W] -> logits [B, num_classes]."""
        x = self.pool(self.features(x))
        return self.classifier(self.embedding(x))


# --------------------------------------------------------------------------------------------------
# ResNet-18, CIFAR variant
# --------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """He et al. (2016) basic block: conv3x3-BN-ReLU-conv3x3-BN plus (projected) shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            # Option B of He et al.: 1x1 projection with batch norm on dimension changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet with basic blocks for 32x32 inputs (He et al., "Deep Residual Learning for Image
    Recognition", CVPR 2016), in the common CIFAR adaptation: a 3x3 stride-1 stem without max-pool,
    four stages of widths 64, 128, 256, 512 (strides 1, 2, 2, 2), global average pooling and a
    linear classifier. ``blocks=(2, 2, 2, 2)`` is ResNet-18 (11.22M parameters with 100 classes).
    """

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 100) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_ch = 64
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [_BasicBlock(in_ch, width, stride)] + [_BasicBlock(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """float32 [B, 3, H, W] -> logits [B, num_classes]."""
        x = self.pool(self.stages(self.stem(x)))
        return self.classifier(x)


# --------------------------------------------------------------------------------------------------
# Wide ResNet
# --------------------------------------------------------------------------------------------------


class _PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the shape changes the shortcut is a 1x1 conv applied to the pre-activated input (the first
    BN-ReLU is shared), as in Zagoruyko & Komodakis' reference code.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.projection = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


class PreActWideResNet(nn.Module):
    """Wide Residual Network WRN-``depth``-``widen`` (Zagoruyko & Komodakis, "Wide Residual
    Networks", BMVC 2016): a 3x3 conv with 16 channels, three groups of (depth - 4) / 6 pre-activation
    basic blocks with 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU, global average pooling and a
    linear classifier. WRN-28-10: widths 16, 160, 320, 640, 36.5M parameters with 100 classes.
    """

    def __init__(
        self, depth: int = 28, widen: int = 10, num_classes: int = 100, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_ch = 16
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [_PreActBlock(in_ch, width, stride, dropout)]
            blocks += [_PreActBlock(width, width, 1, dropout) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            in_ch = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), GlobalAvgPool())
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """float32 [B, 3, H, W] -> logits [B, num_classes]."""
        x = self.head(self.groups(self.stem(x)))
        return self.classifier(x)


# --------------------------------------------------------------------------------------------------
# SpeedNet: a speedrun-class CIFAR network
# --------------------------------------------------------------------------------------------------


class _ConvGroup(nn.Module):
    """``depth`` 3x3 convolutions without bias, each followed by BatchNorm and GELU, with a 2x2 max-pool
    after the first convolution (before its BatchNorm): the block of Jordan's airbench (2024)."""

    def __init__(self, in_ch: int, out_ch: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False))
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            layers += [_speed_bn(out_ch), nn.GELU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _speed_bn(channels: int) -> nn.BatchNorm2d:
    # airbench's BatchNorm: fast running statistics (PyTorch momentum 0.4 = its 0.6 in Keras' convention)
    # and a tiny epsilon
    return nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)


class SpeedNet(nn.Module):
    """A speedrun-class CIFAR network, after the design of Jordan's airbench ("94% on CIFAR-10 in 3.29
    Seconds on a Single GPU", arXiv:2404.00498, 2024) and its CIFAR-100 descendants, written anew:

    * a 2x2 convolution without padding from 3 to 24 channels (2 x 3 x 2 x 2: room for every direction of
      a 2x2 patch with both signs, which ``whiten_init`` fills with the patch-whitening filters), GELU;
    * three groups of ``depth`` 3x3 convolutions (``width``, ``2 * width``, ``4 * width`` channels), a 2x2
      max-pool after each group's first convolution, BatchNorm (momentum 0.4, eps 1e-12) and GELU after
      each convolution (32 -> 31 -> 15 -> 7 -> 3 pixels);
    * global max pooling and a linear classifier without bias whose output is scaled by 1/9 (airbench's
      temperature, which keeps the first steps' logits small).

    ``width=64, depth=2``: 1.18M parameters with 100 classes, about 0.12 GFLOPs (multiply-adds) per image
    forward; airbench94's own widths are 64, 256, 256.
    """

    STEM_CHANNELS = 24

    def __init__(self, num_classes: int = 100, width: int = 64, depth: int = 2) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(3, self.STEM_CHANNELS, 2, padding=0, bias=True), nn.GELU())
        groups, in_ch = [], self.STEM_CHANNELS
        for w in widths:
            groups.append(_ConvGroup(in_ch, w, depth))
            in_ch = w
        self.groups = nn.Sequential(*groups)
        self.classifier = nn.Linear(in_ch, num_classes, bias=False)
        # PyTorch's default initialisation, as airbench keeps it (BatchNorm starts as the identity)

    def forward(self, x: Tensor) -> Tensor:
        """float32 [B, 3, H, W] -> logits [B, num_classes]."""
        x = self.groups(self.stem(x)).amax(dim=(2, 3))
        return self.classifier(x) / 9.0


# --------------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------------


@MODELS.register("plainnet")
def plainnet(num_classes: int = 100) -> nn.Module:
    """Plain-11 of Barz & Denzler (the original project's CIFAR default); see :class:`PlainNet11`."""
    return PlainNet11(num_classes=num_classes)


@MODELS.register("resnet18", aliases=("ResNet18",))
def resnet18(num_classes: int = 100) -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool); see :class:`ResNetCifar`."""
    return ResNetCifar((2, 2, 2, 2), num_classes=num_classes)


@MODELS.register("wrn28-10")
def wrn28_10(num_classes: int = 100) -> nn.Module:
    """WideResNet-28-10 without dropout; see :class:`PreActWideResNet`."""
    return PreActWideResNet(28, 10, num_classes=num_classes, dropout=0.0)


@MODELS.register("speednet", params=(
    Param("width", "int", 64, "channels of the first group (the others have 2x and 4x)", low=1,
          unit="channels", source="airbench's first group (Jordan 2024); 64, 128, 256 fit a 2-core CPU's "
          "10 minutes"),
    Param("depth", "int", 2, "3x3 convolutions per group", low=1,
          source="airbench's two per group (Jordan 2024)"),
))
def speednet(num_classes: int = 100, *, width: int, depth: int) -> nn.Module:
    """Speedrun-class network (airbench-style): 2x2 stem, three conv-pool-BN-GELU groups.

    See :class:`SpeedNet`."""
    return SpeedNet(num_classes=num_classes, width=width, depth=depth)


if __name__ == "__main__":  # pragma: no cover - quick size report
    for model_name in MODELS:
        net = build_model(model_name)
        shape = tuple(net(torch.zeros(2, 3, 32, 32)).shape)
        print(f"{model_name}: {count_parameters(net):,} parameters, output {shape}")
