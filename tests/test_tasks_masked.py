"""Masked prediction: the loss sees hidden patches only, the mask ratio is exact, the ViT's blocks
see the visible tokens only, the preview shows the model's own predictions, a run resumes exactly."""

from __future__ import annotations

import pytest
import torch
from synthetic import ADAM, encoder, images, info, loader, trainer

from pretrain.encoders import patchify, unpatchify
from pretrain.tasks.figures import label_width, labeled_grid, title_height
from pretrain.tasks.masked import MaskedPrediction, masked_patch_loss, random_patch_mask, split_visible


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


def test_a_labeled_enlarged_picture_of_originals_masked_and_predictions_is_written_every_epoch(tmp_path):
    from PIL import Image

    task = MaskedPrediction(encoder("cnn"), ADAM, info())
    x, y = images()
    trainer(tmp_path, max_epochs=2).fit(task, train_dataloaders=loader(x, y))
    pictures = sorted((tmp_path / "masked").iterdir())
    assert [p.name for p in pictures] == ["epoch_000.png", "epoch_001.png"]
    with Image.open(pictures[-1]) as im:
        # 8 images of 16x16 a row with 1-pixel padding, 3 rows, 4x enlarged, a label column and a title.
        left = label_width(["original", "masked input", "prediction"])
        assert im.size == (left + (8 * 17 + 1) * 4, title_height("epoch 1") + 3 * 18 * 4)
    assert not list(tmp_path.glob("masked/.*"))  # no temporary file left


@pytest.mark.parametrize("ratio,patch_size,visible", [(0.75, None, 4), (0.5, None, 8), (0.75, 8, 4), (0.5, 8, 8)])
def test_the_vit_blocks_see_only_the_visible_tokens_as_embedded(ratio, patch_size, visible):
    torch.manual_seed(0)
    task = MaskedPrediction(encoder("vit"), ADAM, info(), patch_size=patch_size, mask_ratio=ratio)
    x, _ = images()
    seen = {}
    task.encoder.blocks[0].register_forward_hook(lambda m, i, out: seen.update(embedded=out))
    for name in ("block1", "block2"):
        getattr(task.encoder.blocks, name).register_forward_pre_hook(lambda m, i, n=name: seen.update({n: i[0]}))
    task.task_loss(x, torch.Generator().manual_seed(3))
    mask, _ = task.mask(x, torch.Generator().manual_seed(3))
    assert visible == round((1 - ratio) * 16)  # 16 tokens of 4x4 pixels
    assert seen["block1"].shape == seen["block2"].shape == (len(x), visible, 32)
    tokens_hidden = patchify(task.hidden_pixels(mask).float(), 4).amax(-1).bool()  # (N, 16) per token
    assert torch.equal(seen["block1"], seen["embedded"][~tokens_hidden].view(len(x), visible, 32))


def test_the_prediction_uses_nothing_of_the_hidden_pixels():
    torch.manual_seed(0)
    for arch in ("vit", "cnn"):
        task = MaskedPrediction(encoder(arch), ADAM, info()).eval()
        x, _ = images()
        mask, _ = task.mask(x, torch.Generator().manual_seed(1))
        noise = torch.randn_like(x) * task.hidden_pixels(mask)
        with torch.no_grad():
            assert torch.equal(task(x + noise, mask), task(x, mask)), arch
            assert not torch.equal(task(x + noise.roll(4, dims=3), mask), task(x, mask)), arch  # visible noise


def test_split_visible_keeps_the_visible_in_order_and_restores_every_token_to_its_place():
    torch.manual_seed(0)
    mask = random_patch_mask(5, 12, 0.75)
    tokens = torch.randn(5, 12, 3)
    ids_keep, ids_restore = split_visible(mask, 3)
    assert torch.equal(ids_keep, torch.arange(12).expand(5, -1)[~mask].view(5, 3))
    kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, 3))
    filler = torch.full((5, 9, 3), -7.0)  # the mask tokens
    restored = torch.cat([kept, filler], dim=1).gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(restored[~mask], tokens[~mask])
    assert (restored[mask] == -7.0).all()
    shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)  # the order ids_restore undoes
    assert torch.equal(
        tokens.gather(1, shuffle.unsqueeze(-1).expand(-1, -1, 3)).gather(
            1, ids_restore.unsqueeze(-1).expand(-1, -1, 3)
        ),
        tokens,
    )


@pytest.mark.parametrize("arch", ["vit", "cnn"])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_the_preview_shows_the_prediction_in_hidden_patches_and_nothing_of_the_image(arch, norm_pix):
    torch.manual_seed(0)
    task = MaskedPrediction(encoder(arch), ADAM, info(), norm_pix_loss=norm_pix).eval()
    x, _ = images()
    mask, _ = task.mask(x, torch.Generator().manual_seed(2))
    hidden = task.hidden_pixels(mask).expand_as(x)
    masked, shown = task.reconstruct(x, torch.Generator().manual_seed(2))
    assert torch.equal(masked, x.masked_fill(hidden, 0.0))
    assert (shown[~hidden] == 0).all()  # visible patches blank, as hidden ones in the input
    with torch.no_grad():
        prediction = task(x, mask)
    if not norm_pix:
        assert torch.equal(shown[hidden], prediction[hidden])
    # Nothing of the hidden patches' true pixels reaches the picture, not even their mean or spread.
    _, other = task.reconstruct(x + 3 * torch.randn_like(x) * hidden, torch.Generator().manual_seed(2))
    assert torch.equal(other[hidden], shown[hidden])


def test_vit_patch_sizes_and_decoder_options_are_checked():
    with pytest.raises(ValueError, match="multiple of the vit's patch size 4"):
        MaskedPrediction(encoder("vit"), ADAM, info(), patch_size=2)
    with pytest.raises(ValueError, match="decoder_dim a multiple of decoder_heads"):
        MaskedPrediction(encoder("vit"), ADAM, info(), decoder_dim=30, decoder_heads=4)
    task = MaskedPrediction(encoder("vit"), ADAM, info(), decoder_dim=16, decoder_depth=3, decoder_heads=2)
    assert len(task.decoder.blocks) == 3 and task.decoder.mask_token.shape == (1, 1, 16)


@pytest.mark.slow
def test_a_masked_vit_run_resumed_mid_epoch_ends_with_the_same_weights(tmp_path, monkeypatch):
    import lightning as L
    from helpers import QUIET, make_config

    import pretrain.__main__ as pretrain_main

    class Crash(BaseException):
        pass

    class CrashAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 8:
                raise Crash

    run = ["task=masked", "backbone=vit", "backbone.dim=16", "backbone.layers=2", "task.decoder_dim=16"]
    run += ["trainer.max_epochs=2", "+trainer.limit_train_batches=6", "faults.checkpoint_every_n_steps=3", *QUIET]
    pretrain_main.run(make_config("pretrain", run), tmp_path / "ref")
    build = pretrain_main.build_trainer
    monkeypatch.setattr(
        pretrain_main, "build_trainer", lambda c, d, cb=(), faults=None: build(c, d, [*cb, CrashAt()], faults=faults)
    )
    with pytest.raises(Crash):
        pretrain_main.run(make_config("pretrain", run), tmp_path / "run")
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    pretrain_main.run(make_config("pretrain", [*run, f"resume={tmp_path / 'run'}"]), tmp_path / "run")
    states = [
        torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in ("ref", "run")
    ]
    assert states[0].keys() == states[1].keys() and any(k.startswith("decoder.blocks") for k in states[0])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # bit for bit, decoder included


def test_the_prediction_row_and_only_it_follows_the_model():
    torch.manual_seed(0)
    task = MaskedPrediction(encoder("cnn"), ADAM, info())
    x, _ = images()
    before = task.preview_rows(x[:4])
    with torch.no_grad():
        next(task.decoder.parameters()).add_(0.5)
    after = task.preview_rows(x[:4])
    assert [label for label, _ in after] == ["original", "masked input", "prediction"]
    assert torch.equal(before[0][1], after[0][1]) and torch.equal(before[1][1], after[1][1])
    assert not torch.equal(before[2][1], after[2][1])
    # In the picture too: the rows are 18 * 4 pixels high, below no title.
    a, b = labeled_grid(before), labeled_grid(after)
    assert a.shape == b.shape and torch.equal(a[:, : 2 * 72], b[:, : 2 * 72])
    assert not torch.equal(a[:, 2 * 72 :], b[:, 2 * 72 :])
