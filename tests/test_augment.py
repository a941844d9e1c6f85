"""Augmentation of batches: every transform drawn per image, reproducible, the dtype and range kept,
each the same as torchvision's for the same value, and bad specs named with the fix."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import QUIET, make_config
from torchvision.transforms.v2 import functional as TF

import pretrain.__main__ as pretrain_main
from pretrain.data.augment import (
    TRANSFORMS,
    Augment,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    augment_problems,
    gaussian_blur,
    rotate_hue,
)
from pretrain.data.images import DataError
from pretrain.data.module import ImageDataModule

EVERY = {name: {} for name in TRANSFORMS}


def images(n: int = 16, channels: int = 3, size: int = 12, dtype=torch.uint8) -> torch.Tensor:
    """n copies of one image with structure in every direction and channel."""
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, channels, size, size, generator=g)
    one = one if dtype.is_floating_point else (one * 255).round().to(torch.uint8)
    return one.expand(n, -1, -1, -1).clone()


def distinct(batch: torch.Tensor) -> int:
    return len(torch.unique(batch.flatten(1).float(), dim=0))


@pytest.mark.parametrize(
    "augment,hflip,max_shift",
    [
        ({"crop": {}}, False, 0),
        ({}, True, 0),
        ({}, False, 2),
        ({"jitter": {"p": 1}}, False, 0),
        ({"grayscale": {"p": 0.5}}, False, 0),
        ({"blur": {"p": 1, "kernel_size": 5}}, False, 0),
    ],
)
def test_each_transform_draws_per_image(augment, hflip, max_shift):
    x = images()
    out = Augment(augment, hflip, max_shift)(x, torch.Generator().manual_seed(0))
    assert distinct(x) == 1 and distinct(out) > 1  # copies of one image come out differently


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_dtype_shape_and_range_are_kept(dtype, channels):
    x = images(32, channels, 16, dtype)
    out = Augment(EVERY, hflip=True, max_shift=1)(x, torch.Generator().manual_seed(1))
    assert out.dtype == dtype and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= (255 if dtype == torch.uint8 else 1)
    assert not torch.equal(out, x)


def test_the_same_seed_draws_the_same_views():
    x, augment = images(), Augment(EVERY, hflip=True)
    first = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(augment(x, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(augment(x, torch.Generator().manual_seed(1)), first)
    torch.manual_seed(3)  # training draws from the global generator, which checkpoints save
    drawn = augment(x)
    torch.manual_seed(3)
    assert torch.equal(augment(x), drawn)


def test_an_empty_augment_changes_nothing():
    x = images()
    assert not Augment().active and Augment()(x) is x


def test_a_whole_image_crop_is_the_image_and_a_quarter_magnifies_it():
    x = torch.arange(12.0).expand(8, 1, 12, 12) / 11  # value: the column
    whole = Augment({"crop": {"scale": [1, 1], "ratio": [1, 1]}})(x)
    torch.testing.assert_close(whole, x)
    quarter = Augment({"crop": {"scale": [0.25, 0.25], "ratio": [1, 1]}})(x)
    # Half the side: neighbouring columns half a column apart (the outermost may repeat the border).
    torch.testing.assert_close(quarter.diff(dim=-1)[..., 1:-1] * 11, torch.full((8, 1, 12, 9), 0.5))


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_colour_adjustments_are_torchvisions_with_a_factor_per_image(ours, theirs, channels):
    x = images(3, channels, 8, torch.float32) * torch.tensor([1.0, 0.5, 0.8]).view(3, 1, 1, 1)
    factors = torch.tensor([0.6, 1.0, 1.4])
    expected = torch.stack([theirs(img, float(f)) for img, f in zip(x, factors, strict=True)])
    torch.testing.assert_close(ours(x, factors), expected)


def test_blur_is_torchvisions_with_a_sigma_per_image():
    x = images(3, 3, 10, torch.float32)
    sigmas = torch.tensor([0.3, 1.0, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(img, [5, 5], [float(s), float(s)]) for img, s in zip(x, sigmas, strict=True)]
    )
    torch.testing.assert_close(gaussian_blur(x, sigmas, 5), expected)


def test_hue_turns_about_the_grey_axis():
    red, grey = torch.tensor([1.0, 0, 0]), torch.tensor([0.3, 0.3, 0.3])
    x = torch.stack([red, grey]).view(2, 3, 1, 1).expand(2, 3, 2, 2)
    out = rotate_hue(x, torch.tensor([1 / 3, 0.25]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1, 0]))  # a third of a turn: red to green
    torch.testing.assert_close(out[1], x[1])  # greys have no hue


def test_grayscale_with_p_1_is_the_luma_of_rgb_images():
    x = images(4, 3, 8, torch.float32)
    torch.testing.assert_close(Augment({"grayscale": {"p": 1}})(x), TF.rgb_to_grayscale(x, num_output_channels=3))


@pytest.mark.parametrize(
    "augment,message",
    [
        ({"blurr": {}}, r"data.augment.blurr is not a transform: did you mean 'blur'\?"),
        ({"crop": {"scale": [0.5, 1.5]}}, r"data.augment.crop.scale=\[0.5, 1.5\] must be \[low, high\] fractions"),
        ({"crop": {"size": 3}}, r"data.augment.crop.size is not an option of crop: its options are \['ratio', 'scale"),
        ({"jitter": {"p": 2}}, r"data.augment.jitter.p=2 must be a probability in \[0, 1\]"),
        ({"jitter": {"hue": 0.7}}, r"data.augment.jitter.hue=0.7 must be in \[0, 0.5\]"),
        ({"blur": {"kernel_size": 4}}, r"data.augment.blur.kernel_size=4 must be an odd number of pixels"),
        ({"blur": {"sigma": [2, 1]}}, r"data.augment.blur.sigma=\[2, 1\] must be \[low, high\]"),
        ({"grayscale": 0.2}, r"data.augment.grayscale must be a mapping of its options \['p'\]"),
    ],
)
def test_bad_specs_are_named_with_the_fix(augment, message):
    (problem,) = augment_problems(augment)  # one line ...
    assert re.match(message, problem)
    with pytest.raises(DataError, match=message):  # ... that the data module refuses with
        ImageDataModule(augment=augment)


@pytest.mark.slow
def test_a_run_with_strong_augmentation_trains_and_repeats(tmp_path):
    """augment=strong on the training batches of a real run: the same seed gives the same numbers,
    and they are not those of the run without it."""
    quick = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "online_eval.every_n_epochs=null", *QUIET]
    strong = [pretrain_main.run(make_config("pretrain", ["augment=strong", *quick]), tmp_path / r) for r in "ab"]
    plain = pretrain_main.run(make_config("pretrain", quick), tmp_path / "plain")
    assert strong[0]["metrics"] == strong[1]["metrics"] != plain["metrics"]
    assert sorted(strong[0]["config"]["data"]["augment"]) == sorted(TRANSFORMS)
    assert strong[0]["config"]["data"]["hflip"] and not plain["config"]["data"]["hflip"]
