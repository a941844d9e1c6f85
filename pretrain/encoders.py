"""Encoders: ordered stacks of named blocks, built from a fixed registry of architectures.

"Reuse the lower k blocks", "drop the top block" and "unfreeze the top two" are slices of
``Encoder.blocks``; no other code reaches into layer names. An encoder is rebuilt from
``(arch, input_shape, options)`` alone, which is what an encoder file records.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Block = tuple[str, nn.Module]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}


class EncoderError(ValueError):
    """An encoder cannot be built as asked."""


class Encoder(nn.Module):
    """A stack of named blocks plus the facts needed to rebuild it."""

    def __init__(self, arch: str, input_shape: Sequence[int], options: dict[str, Any], blocks: list[Block]):
        super().__init__()
        self.arch = arch
        self.input_shape = tuple(int(d) for d in input_shape)
        self.options = options
        self.blocks = nn.Sequential(OrderedDict(blocks))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.blocks.named_children()]

    def block_shapes(self) -> list[tuple[int, ...]]:
        """Output shape (without the batch dimension) of every block, input shape first."""
        shapes = [self.input_shape]
        was_training = self.training
        self.eval()
        # Two images: some blocks (batch norm in train mode, token pooling) dislike a batch of one.
        x = torch.zeros(2, *self.input_shape, device=next(self.parameters()).device)
        with torch.no_grad():
            for block in self.blocks:
                x = block(x)
                shapes.append(tuple(x.shape[1:]))
        self.train(was_training)
        return shapes

    def truncated(self, depth: int) -> Encoder:
        """The lower ``depth`` blocks, sharing their modules with this encoder."""
        if not 1 <= depth <= len(self):
            raise EncoderError(
                f"cannot keep {depth} block(s) of a {len(self)}-block {self.arch} encoder "
                f"({', '.join(self.block_names)}): choose 1..{len(self)}"
            )
        return Encoder(self.arch, self.input_shape, self.options, list(self.blocks.named_children())[:depth])

    def spec(self) -> dict[str, Any]:
        """Everything ``build_encoder`` needs to rebuild this architecture."""
        return {"arch": self.arch, "input_shape": list(self.input_shape), "options": self.options, "depth": len(self)}


class GlobalPool(nn.Module):
    """Features of any block as one vector per image: mean over space or tokens."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return x.mean(dim=(2, 3))
        if x.dim() == 3:
            return x.mean(dim=1)
        return x.flatten(1)


def feature_dim(shape: Sequence[int]) -> int:
    """Width of ``GlobalPool``'s output for block output ``shape`` (no batch dimension)."""
    return int(shape[-1]) if len(shape) == 2 else int(shape[0])


Readout = Literal["flatten", "mean"]


def readout(kind: Readout, shape: Sequence[int]) -> tuple[nn.Module, int]:
    """A block's output as one vector per image, and that vector's width.

    ``flatten`` keeps every position: where in the image a feature is, which a classifier of small
    images trained on few labels needs (10 Fashion-MNIST classes from 10 labels each: 73.6% against
    66.4% with ``mean``, docs/results.md). ``mean`` averages over positions or tokens: invariant to
    where a feature is, the usual readout of large feature maps.
    """
    if kind == "flatten":
        return nn.Flatten(), math.prod(int(d) for d in shape)
    if kind == "mean":
        return GlobalPool(), feature_dim(shape)
    raise EncoderError(f"unknown readout {kind!r}: choose flatten or mean")


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise EncoderError(f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _init_for(activation: str) -> Callable[[nn.Module], None]:
    # SELU self-normalizes only with LeCun-normal weights; ReLU-like units want He init.
    nonlinearity = "linear" if activation in ("selu", "tanh") else "relu"

    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    return init


def mlp(
    input_shape: Sequence[int],
    widths: Sequence[int] = (300, 100, 50, 50, 50),
    activation: str = "selu",
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> Iterator[Block]:
    """Dense layers on the flattened image; one block per hidden layer."""
    if not widths:
        raise EncoderError("an mlp needs at least one hidden width (backbone.widths)")
    fan_in = math.prod(int(d) for d in input_shape)
    for i, width in enumerate(widths):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers.append(nn.Linear(fan_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_activation(activation))
        if dropout:
            layers.append(nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout))
        block = nn.Sequential(*layers)
        block.apply(_init_for(activation))
        yield f"dense{i + 1}", block
        fan_in = width


def cnn(
    input_shape: Sequence[int],
    channels: Sequence[int] = (32, 64, 128),
    activation: str = "relu",
    batch_norm: bool = True,
) -> Iterator[Block]:
    """3x3 conv blocks; each halves the resolution while it is at least 2 pixels."""
    c_in, size = int(input_shape[0]), min(int(input_shape[1]), int(input_shape[2]))
    for i, c_out in enumerate(channels):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(_activation(activation))
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        block = nn.Sequential(*layers)
        block.apply(_init_for(activation))
        yield f"conv{i + 1}", block
        c_in = c_out


Stem = Literal["auto", "small", "standard"]

SMALL_STEM_MAX_SIDE = 63
"""``stem="auto"``: images up to this side get the small stem, larger ones torchvision's."""


def _resnet(net: nn.Module, input_shape: Sequence[int], stem: Stem) -> list[Block]:
    """torchvision ResNet ``net`` (random weights) as blocks stem, layer1..layer4, on ``input_shape`` images.

    The ``standard`` stem is torchvision's (7x7 stride-2 convolution and a stride-2 max pool: a
    quarter of the side, for images of 64 px and more); the ``small`` one a 3x3 stride-1
    convolution and no pool, so 8x8 to 32x32 images keep enough resolution; ``auto`` picks by the
    image's shorter side.
    """
    if stem == "auto":
        stem = "small" if min(int(d) for d in input_shape[1:]) <= SMALL_STEM_MAX_SIDE else "standard"
    if stem not in ("small", "standard"):
        raise EncoderError(f"resnet: stem must be auto, small or standard, not {stem!r}")
    size, stride = (3, 1) if stem == "small" else (7, 2)
    conv = nn.Conv2d(int(input_shape[0]), 64, size, stride=stride, padding=size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
    layers = [conv, net.bn1, net.relu] + ([net.maxpool] if stem == "standard" else [])
    return [("stem", nn.Sequential(*layers))] + [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]


def resnet18(input_shape: Sequence[int], stem: Stem = "auto") -> list[Block]:
    """torchvision's ResNet-18 (basic blocks, 512 channels out, 11M weights); see ``_resnet``."""
    from torchvision.models import resnet18 as tv_resnet18

    return _resnet(tv_resnet18(weights=None), input_shape, stem)


def resnet50(input_shape: Sequence[int], stem: Stem = "auto") -> list[Block]:
    """torchvision's ResNet-50 (bottleneck blocks, 2048 channels out, 24M weights); see ``_resnet``."""
    from torchvision.models import resnet50 as tv_resnet50

    return _resnet(tv_resnet50(weights=None), input_shape, stem)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(N, C, H, W)`` images to ``(N, L, C*p*p)`` patches, row by row: the order of ``PatchEmbed``'s tokens."""
    return F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)


def unpatchify(patches: Tensor, patch_size: int, image_size: Sequence[int]) -> Tensor:
    """The inverse of ``patchify``: ``(N, L, C*p*p)`` patches back to ``(N, C, H, W)`` images."""
    return F.fold(patches.transpose(1, 2), tuple(image_size), patch_size, stride=patch_size)


class PatchEmbed(nn.Module):
    """Image to tokens: non-overlapping ``patch_size`` patches, each linearly embedded, plus learned positions."""

    def __init__(self, input_shape: Sequence[int], patch_size: int, dim: int) -> None:
        super().__init__()
        channels, height, width = (int(d) for d in input_shape)
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, (height // patch_size) * (width // patch_size), dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.position


def vit(
    input_shape: Sequence[int],
    patch_size: int = 4,
    dim: int = 64,
    layers: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    activation: str = "gelu",
) -> Iterator[Block]:
    """A small vision transformer: a patch embedding, then ``layers`` pre-norm transformer blocks.

    Every block outputs ``(L, dim)`` tokens, one per patch (no class token: ``GlobalPool``
    averages the tokens). At 28x28 with 4x4 patches that is 49 tokens.
    """
    _, height, width = (int(d) for d in input_shape)
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise EncoderError(
            f"vit: patch_size {patch_size} must divide the image height and width {(height, width)}: "
            "choose another backbone.patch_size, or resize the images (data.image_size)"
        )
    if dim % heads:
        raise EncoderError(f"vit: dim {dim} must be a multiple of heads {heads}")
    if layers < 1:
        raise EncoderError("vit: layers must be at least 1")
    if activation not in ("relu", "gelu"):
        raise EncoderError(f"vit: activation must be relu or gelu, not {activation!r}")
    yield "embed", PatchEmbed(input_shape, patch_size, dim)
    for i in range(layers):
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            round(dim * mlp_ratio),
            dropout,
            activation=activation,
            batch_first=True,
            norm_first=True,  # pre-norm: trains stably without a warm-up
        )
        yield f"block{i + 1}", layer


BACKBONES: dict[str, Callable[..., Iterable[Block]]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": vit,
}
"""The only architectures an encoder file may name. A builder yields its blocks bottom up, and
may build each only when asked for it: ``build_encoder(depth=k)`` pays for the lower k blocks."""


def build_encoder(arch: str, input_shape: Sequence[int], depth: int | None = None, **options: Any) -> Encoder:
    """A fresh encoder of a registered architecture for images of ``input_shape`` (C, H, W),
    cut to its lower ``depth`` blocks if given (the blocks above are never built)."""
    resolved = _resolve(arch, input_shape, options)
    blocks = _blocks(arch, input_shape, resolved)
    encoder = Encoder(arch, input_shape, resolved, list(islice(blocks, depth) if depth and depth > 0 else blocks))
    return encoder if depth is None or depth == len(encoder) else encoder.truncated(depth)


def encoder_blocks(arch: str, input_shape: Sequence[int], **options: Any) -> Iterator[Block]:
    """The blocks ``build_encoder`` would stack, bottom up, each built only when the caller asks for
    it: whatever layer count the options name, a caller that stops after k blocks pays for k."""
    return _blocks(arch, input_shape, _resolve(arch, input_shape, options))


def _resolve(arch: str, input_shape: Sequence[int], options: dict[str, Any]) -> dict[str, Any]:
    """Every option of the builder, defaults included, as plain values."""
    if arch not in BACKBONES:
        raise EncoderError(f"unknown backbone {arch!r}: choose one of {sorted(BACKBONES)}")
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise EncoderError(f"input_shape must be (channels, height, width), not {tuple(input_shape)}")
    builder = BACKBONES[arch]
    try:
        bound = inspect.signature(builder).bind(input_shape, **options)
    except TypeError as err:
        params = [p for p in inspect.signature(builder).parameters if p != "input_shape"]
        raise EncoderError(f"backbone {arch!r}: {err}; its options are {params}") from None
    bound.apply_defaults()
    return {k: _plain(v) for k, v in bound.arguments.items() if k != "input_shape"}


def _blocks(arch: str, input_shape: Sequence[int], resolved: dict[str, Any]) -> Iterator[Block]:
    try:
        yield from BACKBONES[arch](input_shape, **resolved)
    except EncoderError:
        raise
    except (ValueError, RuntimeError) as err:  # torch's own refusal, e.g. a negative width or dropout > 1
        raise EncoderError(f"backbone {arch!r} with options {resolved}: {err}") from None


def _plain(value: Any) -> Any:
    """Options as JSON-friendly values (OmegaConf lists and tuples become lists)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return [_plain(v) for v in value]
