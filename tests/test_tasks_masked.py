"""Masked prediction: the loss sees hidden patches only, the mask ratio is exact, the preview is written."""

from __future__ import annotations

import pytest
import torch
from synthetic import ADAM, encoder, images, info, loader, trainer

from pretrain.encoders import patchify, unpatchify
from pretrain.tasks.masked import MaskedPrediction, masked_patch_loss, random_patch_mask


def hidden_pixels(task: MaskedPrediction, mask: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` booleans, True on the pixels of hidden patches."""
    p = task.patch_size
    return mask.view(-1, 1, *task.grid).repeat_interleave(p, 2).repeat_interleave(p, 3)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_the_loss_ignores_visible_patches(norm_pix):
    torch.manual_seed(0)
    prediction, target = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    mask = random_patch_mask(3, 16, 0.5)
    loss = masked_patch_loss(prediction, target, mask, norm_pix)
    changed = prediction.clone()
    changed[~mask] += 10.0
    assert torch.equal(masked_patch_loss(changed, target, mask, norm_pix), loss)
    changed[mask] += 10.0
    assert masked_patch_loss(changed, target, mask, norm_pix) > loss + 1


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_the_task_loss_ignores_what_the_decoder_predicts_for_visible_patches(arch):
    torch.manual_seed(0)
    task = MaskedPrediction(encoder(arch), ADAM, info())
    x, _ = images()
    mask, _ = task.mask(x, torch.Generator().manual_seed(5))
    visible = ~hidden_pixels(task, mask)
    loss = task.task_loss(x, torch.Generator().manual_seed(5))
    handle = task.decoder.register_forward_hook(lambda m, i, out: out + 10.0 * visible)
    assert torch.allclose(task.task_loss(x, torch.Generator().manual_seed(5)), loss)
    handle.remove()
    task.decoder.register_forward_hook(lambda m, i, out: out + 10.0 * ~visible)
    assert task.task_loss(x, torch.Generator().manual_seed(5)) > loss + 1


@pytest.mark.parametrize("ratio,patches", [(0.75, 16), (0.5, 49), (0.3, 49), (0.9, 10)])
def test_the_mask_ratio_is_exact_for_every_image(ratio, patches):
    mask = random_patch_mask(64, patches, ratio)
    assert (mask.sum(dim=1) == round(ratio * patches)).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # each image its own mask


def test_the_masked_image_hides_exactly_the_masked_patches():
    task = MaskedPrediction(encoder("vit"), ADAM, info(), mask_ratio=0.75)
    x, _ = images()
    x = x + 5.0  # no pixel is 0 by chance
    mask, masked = task.mask(x)
    patches = patchify(masked, task.patch_size)
    assert (mask.sum(1) == 12).all()  # 16 patches of 4x4 in 16x16 images
    assert (patches[mask] == 0).all()
    assert torch.equal(patches[~mask], patchify(x, task.patch_size)[~mask])
    assert torch.equal(unpatchify(patchify(x, 4), 4, (16, 16)), x)


def test_default_ratios_and_patch_sizes():
    vit = MaskedPrediction(encoder("vit"), ADAM, info())
    cnn = MaskedPrediction(encoder("cnn"), ADAM, info())
    assert (vit.mask_ratio, vit.patch_size) == (0.75, 4)
    assert (cnn.mask_ratio, cnn.patch_size) == (0.5, 4)
    with pytest.raises(ValueError, match="must divide"):
        MaskedPrediction(encoder("cnn"), ADAM, info(), patch_size=5)
    with pytest.raises(ValueError, match="hides 16 of 16"):
        MaskedPrediction(encoder("cnn"), ADAM, info(), mask_ratio=0.99)


def test_a_picture_of_originals_masked_and_reconstructions_is_written_every_epoch(tmp_path):
    from PIL import Image

    task = MaskedPrediction(encoder("cnn"), ADAM, info())
    x, y = images()
    trainer(tmp_path, max_epochs=2).fit(task, train_dataloaders=loader(x, y))
    pictures = sorted((tmp_path / "masked").iterdir())
    assert [p.name for p in pictures] == ["epoch_000.png", "epoch_001.png"]
    with Image.open(pictures[-1]) as im:
        # torchvision's grid: 8 images a row, 3 rows (originals, masked, reconstructions), 2-pixel padding.
        assert im.size == (8 * 18 + 2, 3 * 18 + 2)
    assert not list(tmp_path.glob("masked/.*"))  # no temporary file left
