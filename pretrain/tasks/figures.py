"""Pictures a run writes (masked reconstructions, GAN samples): labeled rows of images, enlarged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SCALE = 4  # nearest-neighbour enlargement: 28x28 images are too small to judge at 1x
PADDING = 1  # pixels between images, before enlargement
MARGIN = 6  # pixels around a label


def label_width(labels: Sequence[str]) -> int:
    """The width of the label column for ``labels``, in pixels."""
    from PIL import Image, ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max(int(draw.textlength(label, font=ImageFont.load_default())) for label in labels) + 2 * MARGIN


def title_height(title: str) -> int:
    """The height of the title strip, in pixels (0 without a title)."""
    from PIL import ImageFont

    return int(ImageFont.load_default().size) + 2 * MARGIN if title else 0


def labeled_grid(rows: Sequence[tuple[str, Tensor]], title: str = "", scale: int = SCALE) -> Tensor:
    """One ``(3, H, W)`` 0..1 image: each row's images (``(N, C, h, w)``, 0..1) side by side, enlarged
    ``scale`` times, with the row's label on its left, and ``title`` (if any) above."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import make_grid

    font = ImageFont.load_default()
    strips = [
        make_grid(images.detach().float().cpu().clamp(0, 1), nrow=len(images), padding=PADDING, pad_value=1.0)
        for _, images in rows
    ]
    strips = [s.repeat_interleave(scale, 1).repeat_interleave(scale, 2) for s in strips]
    left = label_width([label for label, _ in rows])
    top = title_height(title)
    canvas = Image.new("RGB", (left + max(s.shape[2] for s in strips), top + sum(s.shape[1] for s in strips)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, MARGIN), title, fill="black", font=font)
    y = top
    for (label, _), strip in zip(rows, strips, strict=True):
        canvas.paste(to_pil_image(strip), (left, y))
        draw.text((MARGIN, y + strip.shape[1] // 2), label, fill="black", font=font, anchor="lm")
        y += strip.shape[1]
    return pil_to_tensor(canvas).to(torch.float32) / 255
