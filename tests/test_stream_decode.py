"""Streamed images are decoded by torchvision.io where it gives PIL's exact pixels, by PIL otherwise: the same
tensors as in memory (data=folder reads with PIL), whatever the file's kind, and damaged bytes named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from pretrain.data.images import DataError
from pretrain.data.stream import decode_image

KINDS = ["RGB", "L", "1", "P", "RGBA", "LA", "I;16", "CMYK"]


def encoded(kind: str, fmt: str, **save) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(kind).save(out, format=fmt, **save)
    return out.getvalue()


CASES = [(k, "PNG") for k in KINDS if k != "CMYK"] + [(k, "JPEG") for k in ("RGB", "L", "1", "CMYK")]


@pytest.mark.parametrize(("kind", "fmt"), CASES)
@pytest.mark.parametrize("mode", ["RGB", "L", None])
def test_the_pixels_are_those_pil_decodes(kind, fmt, mode):
    data = encoded(kind, fmt)
    with Image.open(io.BytesIO(data)) as im:
        expected = pil_to_tensor(im.convert(mode or ("L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB")))
    got = decode_image(data, mode)
    assert got.dtype == expected.dtype and got.shape == expected.shape and (got == expected).all()


def test_a_transparent_colour_is_dropped_as_pil_drops_it():
    data = encoded("RGB", "PNG", transparency=(1, 2, 3))
    assert (decode_image(data, "RGB") == pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))).all()


def test_damaged_bytes_are_named():
    with pytest.raises(DataError, match="the stored image of c0/1.jpg cannot be decoded .* prepare the collection"):
        decode_image(encoded("RGB", "JPEG")[:40], "RGB", name="c0/1.jpg")
