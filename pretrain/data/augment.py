"""Image augmentation of whole batches on their device, every image drawn on its own.

torchvision's v2 transforms draw one set of random parameters per call, so on a batch tensor
every image gets the same crop; applied image by image they cost a Python loop of small
kernels per batch (``scripts/bench_augment.py``, SimCLR's transforms at batch 256 on one
shared CPU core: 28x28 grayscale 0.04-0.08 s per batch against 0.003 s here, 96x96 RGB
0.21-0.33 s against 0.12-0.19 s). So the transforms are
those of ``torchvision.transforms.v2``, with its parameters and their meaning, but each draws
one value per image and is applied to the whole batch at once, in this order:

- ``crop`` (RandomResizedCrop): a crop of ``scale`` of the area with aspect ratio (width /
  height) in ``ratio``, resampled bilinearly to the image's size; a side that would leave the
  image is the image's whole side (torchvision draws again, ten times at most);
- ``hflip`` (RandomHorizontalFlip, p 0.5), one resampling with the crop when there is one;
- ``max_shift``: a translation of up to this many pixels each way, zeros shifted in;
- ``jitter`` (RandomApply(ColorJitter), ``p``): brightness, contrast, saturation, hue, each
  factor drawn per image from ``1 +- value`` (hue: ``+- hue`` turns, rotated about the grey axis
  of RGB: a linear map, not torchvision's HSV round trip), in this fixed order (torchvision's
  order is random per call); saturation and hue change RGB images only;
- ``grayscale`` (RandomGrayscale, ``p``), RGB images only;
- ``blur`` (RandomApply(GaussianBlur), ``p``): a Gaussian of ``sigma`` drawn per image,
  ``kernel_size`` pixels wide (odd; null: about a tenth of the image side, as SimCLR).

Images follow torchvision's convention: uint8 in 0..255, returned as uint8, or float in 0..1,
returned as float. Random numbers come from the generator given, else from torch's global
generator of the device (which the RandomState callback saves in checkpoints).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import rgb_to_grayscale

TRANSFORMS: dict[str, dict[str, Any]] = {
    "crop": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "grayscale": {"p": 0.2},
    "blur": {"p": 0.5, "sigma": (0.1, 2.0), "kernel_size": None},
}
"""The transforms ``data.augment`` may name, with every option and its default (SimCLR's)."""

Spec = Mapping[str, Mapping[str, Any]]


def augment_problems(augment: Spec | None, where: str = "data.augment") -> list[str]:
    """What is wrong with an augmentation spec (``{transform: {option: value}}``), one line each."""
    problems: list[str] = []
    for name, options in (augment or {}).items():
        if name not in TRANSFORMS:
            close = difflib.get_close_matches(name, TRANSFORMS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose from {sorted(TRANSFORMS)}"
            problems.append(f"{where}.{name} is not a transform: {hint}")
            continue
        if not isinstance(options, Mapping):
            problems.append(f"{where}.{name} must be a mapping of its options {sorted(TRANSFORMS[name])}, or {{}}")
            continue
        for key in sorted(set(options) - set(TRANSFORMS[name])):
            problems.append(
                f"{where}.{name}.{key} is not an option of {name}: its options are {sorted(TRANSFORMS[name])}"
            )
        values = {**TRANSFORMS[name], **{k: v for k, v in options.items() if k in TRANSFORMS[name]}}
        problems += [f"{where}.{name}.{problem}" for problem in _value_problems(name, values)]
    return problems


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_range(v: Any, low: float, high: float) -> bool:
    return isinstance(v, Sequence) and len(v) == 2 and all(_is_number(x) for x in v) and low < v[0] <= v[1] <= high


def _value_problems(name: str, values: dict[str, Any]) -> list[str]:
    problems = []
    if "p" in values and not (_is_number(values["p"]) and 0 <= values["p"] <= 1):
        problems.append(f"p={values['p']!r} must be a probability in [0, 1]")
    if name == "crop":
        if not _is_range(values["scale"], 0, 1):
            problems.append(
                f"scale={values['scale']!r} must be [low, high] fractions of the image area with "
                "0 < low <= high <= 1, e.g. [0.08, 1.0]"
            )
        if not _is_range(values["ratio"], 0, math.inf):
            problems.append(
                f"ratio={values['ratio']!r} must be [low, high] aspect ratios (width / height) with 0 < low <= high, "
                "e.g. [0.75, 1.33]"
            )
    elif name == "jitter":
        for key, high in (("brightness", 1), ("contrast", 1), ("saturation", 1), ("hue", 0.5)):
            if not (_is_number(values[key]) and 0 <= values[key] <= high):
                problems.append(f"{key}={values[key]!r} must be in [0, {high}]")
    elif name == "blur":
        if not _is_range(values["sigma"], 0, math.inf):
            problems.append(f"sigma={values['sigma']!r} must be [low, high] with 0 < low <= high, e.g. [0.1, 2.0]")
        size = values["kernel_size"]
        if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % 2):
            problems.append(f"kernel_size={size!r} must be an odd number of pixels, or null: a tenth of the image side")
    return problems


class Augment(nn.Module):
    """Random transforms of image batches, drawn per image (see the module's docstring).

    ``augment`` names the transforms to apply and their options (``TRANSFORMS`` lists both; an
    option left out takes its default); ``hflip`` and ``max_shift`` are the flip and shift.
    """

    def __init__(self, augment: Spec | None = None, hflip: bool = False, max_shift: int = 0) -> None:
        super().__init__()
        if problems := augment_problems(augment):
            raise ValueError("; ".join(problems))
        if max_shift < 0:
            raise ValueError(f"max_shift={max_shift} must be >= 0 pixels")
        self.spec = {name: {**TRANSFORMS[name], **options} for name, options in (augment or {}).items()}
        self.hflip, self.max_shift = hflip, max_shift

    @property
    def active(self) -> bool:
        """Whether it changes images at all."""
        return bool(self.spec or self.hflip or self.max_shift)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.active:
            return images
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        draw = _Draw(len(x), x, generator)
        if "crop" in self.spec:
            x = crop_and_flip(x, draw, self.hflip, **self.spec["crop"])
        elif self.hflip:
            x = torch.where(draw.chance(0.5)[:, None, None, None], x.flip(-1), x)
        if self.max_shift:
            x = shift(x, draw, self.max_shift)
        if "jitter" in self.spec:
            x = jitter(x, draw, **self.spec["jitter"])
        if "grayscale" in self.spec and x.shape[1] == 3:
            x = torch.where(draw.chance(self.spec["grayscale"]["p"])[:, None, None, None], grayscale(x), x)
        if "blur" in self.spec:
            x = blur(x, draw, **self.spec["blur"])
        if images.dtype == torch.uint8:
            return (x * 255).round_().clamp_(0, 255).to(torch.uint8)
        return x


class _Draw:
    """Random values, one per image, on the batch's device, from one generator."""

    def __init__(self, n: int, like: Tensor, generator: torch.Generator | None) -> None:
        self.n, self.device, self.dtype, self.generator = n, like.device, like.dtype, generator

    def uniform(self, low: float, high: float) -> Tensor:
        u = torch.rand(self.n, device=self.device, dtype=self.dtype, generator=self.generator)
        return low + (high - low) * u

    def chance(self, p: float) -> Tensor:
        return torch.rand(self.n, device=self.device, generator=self.generator) < p

    def integers(self, low: int, high: int, columns: int) -> Tensor:
        return torch.randint(low, high, (self.n, columns), device=self.device, generator=self.generator)


def crop_and_flip(x: Tensor, draw: _Draw, hflip: bool, scale: Sequence[float], ratio: Sequence[float]) -> Tensor:
    """Each image's random resized crop, mirrored at random if ``hflip``, in one bilinear resampling."""
    n, _, height, width = x.shape
    area = draw.uniform(*scale)
    aspect = draw.uniform(math.log(ratio[0]), math.log(ratio[1])).exp()  # width / height of the crop
    # Crop sides as fractions of the image's; a side that would not fit is the image's whole side.
    crop_w = (area * aspect * height / width).sqrt().clamp(max=1)
    crop_h = (area / aspect * width / height).sqrt().clamp(max=1)
    # Centres in grid_sample's coordinates (-1..1 spans the image), so that the crop lies inside it.
    centre_x = (1 - crop_w) * draw.uniform(-1, 1)
    centre_y = (1 - crop_h) * draw.uniform(-1, 1)
    mirror = torch.ones_like(crop_w)
    if hflip:
        mirror = torch.where(draw.chance(0.5), -mirror, mirror)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shift(x: Tensor, draw: _Draw, max_shift: int) -> Tensor:
    """Each image moved by up to ``max_shift`` whole pixels each way, zeros shifted in."""
    n, _, height, width = x.shape
    moves = draw.integers(-max_shift, max_shift + 1, 2).to(x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 2 * moves[:, 0] / width
    theta[:, 1, 2] = 2 * moves[:, 1] / height
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """Luma of 0..1 images with as many channels (ITU-R 601, as torchvision)."""
    return rgb_to_grayscale(x, num_output_channels=x.shape[1]) if x.shape[1] == 3 else x


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * other`` per image, kept in 0..1 (torchvision's ``_blend``)."""
    return (_per_image(factor) * x + (1 - _per_image(factor)) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_image(factor)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, grayscale(x), factor) if x.shape[1] == 3 else x


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """RGB rotated about the grey axis by ``turns`` of a full circle per image: greys stay, a third
    of a turn takes red to green."""
    if x.shape[1] != 3:
        return x
    angle = 2 * math.pi * turns
    cos, sin = _per_image(angle.cos()).squeeze(-1), _per_image(angle.sin()).squeeze(-1)
    # Made on the device, not copied from the host (a copy to a GPU waits for its queued work).
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    cross = (eye.roll(1, 0) - eye.roll(-1, 0)) / math.sqrt(3)  # u x v for u the grey axis (1, 1, 1) / sqrt(3)
    rotation = cos * eye + sin * cross + (1 - cos) / 3 * torch.ones_like(eye)  # Rodrigues' formula
    return torch.einsum("nij,njhw->nihw", rotation, x).clamp(0, 1)


def jitter(
    x: Tensor, draw: _Draw, p: float, brightness: float, contrast: float, saturation: float, hue: float
) -> Tensor:
    """Colour jitter of a random ``p`` of the images: factors drawn per image, 1 for the others."""
    chosen = draw.chance(p)
    one = torch.ones(len(x), device=x.device, dtype=x.dtype)
    adjustments = ((brightness, adjust_brightness), (contrast, adjust_contrast), (saturation, adjust_saturation))
    for amount, adjust in adjustments:
        if amount:
            x = adjust(x, torch.where(chosen, draw.uniform(1 - amount, 1 + amount), one))
    if hue:
        x = rotate_hue(x, torch.where(chosen, draw.uniform(-hue, hue), one - 1))
    return x


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Each image blurred by a Gaussian of its own ``sigma``, ``kernel_size`` wide, reflecting
    at the borders (torchvision's ``gaussian_blur``, one kernel per image)."""
    n, c, height, width = x.shape
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-0.5 * (offsets / sigma[:, None]) ** 2, dim=1)  # normalized exp(-d^2 / 2 sigma^2)
    kernel = kernel.repeat_interleave(c, dim=0)  # one per image and channel: a grouped convolution
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.view(n, c, height, width)


def blur(x: Tensor, draw: _Draw, p: float, sigma: Sequence[float], kernel_size: int | None) -> Tensor:
    """A Gaussian blur of a random ``p`` of the images, each with a ``sigma`` of its own."""
    chosen, sigmas = draw.chance(p), draw.uniform(*sigma)
    if kernel_size is None:
        kernel_size = max(3, min(x.shape[-2:]) // 10 // 2 * 2 + 1)
    kernel_size = min(kernel_size, 2 * (min(x.shape[-2:]) - 1) + 1)  # reflection needs a border narrower than the image
    return torch.where(chosen[:, None, None, None], gaussian_blur(x, sigmas, kernel_size), x)
