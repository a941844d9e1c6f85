"""Two views of one image are the same: NT-Xent against its formula, views drawn per image and
reproducibly, a crashed run resumed to the same weights, and the exported encoder fine-tuned.
(Training lowers the loss on every encoder family, and the export computes the same: test_tasks_common.)"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import QUIET, make_config
from safetensors.torch import load_file
from synthetic import ADAM, encoder, info

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.encoder_file.format import load_encoder
from pretrain.tasks.contrastive import Contrastive, Views, nt_xent


def test_nt_xent_is_the_cross_entropy_of_each_view_against_its_partner():
    g = torch.Generator().manual_seed(0)
    a, b, temperature = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), 0.3
    loss, _ = nt_xent(a, b, temperature)
    z = F.normalize(torch.cat([a, b]), dim=1)
    terms = []
    for i in range(6):  # view i's partner is view i + 3 (mod 6); its candidates every view but itself
        others = torch.stack([z[i] @ z[k] / temperature for k in range(6) if k != i])
        terms.append(torch.logsumexp(others, 0) - z[i] @ z[(i + 3) % 6] / temperature)
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_nt_xent_of_identical_views_is_low_and_of_swapped_partners_high():
    # Two images, orthogonal, each view identical to its partner: every view's loss is log(1 + 2 exp(-1/T)).
    e = torch.eye(2)
    loss, accuracy = nt_xent(e, e, 0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + 2 * math.exp(-2))))
    assert accuracy == 1
    a = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    same, same_accuracy = nt_xent(a, a * 3, 0.1)  # the scale is normalized away
    swapped, swapped_accuracy = nt_xent(a, a.roll(1, 0), 0.1)  # each view's copy is another's partner
    assert same < 0.05 and same_accuracy == 1
    assert swapped > 5 and swapped_accuracy == 0


def ramp(n: int = 16, size: int = 12) -> torch.Tensor:
    """n copies of one image whose value is its column index."""
    return torch.arange(size, dtype=torch.float32).expand(n, 1, size, size).clone()


def test_views_differ_per_image_and_come_from_the_generator_given():
    pixels = (ramp() + torch.arange(12.0).view(12, 1)) / 22  # not symmetric: a mirror or a crop shows
    x = (pixels - 0.5) / 0.25
    views = Views(mean=(0.5,), std=(0.25,))
    first = views(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape
    distances = torch.cdist(first.flatten(1), first.flatten(1))
    assert (distances + torch.eye(len(x)) > 1e-3).all()  # every image of the batch drawn on its own
    assert torch.equal(views(x, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(views(x, torch.Generator().manual_seed(1)), first)
    torch.manual_seed(3)  # training draws from the global generator, which checkpoints save
    drawn = views(x)
    torch.manual_seed(3)
    assert torch.equal(views(x), drawn)


def test_a_crop_resamples_its_part_of_the_image_mirrored_or_not():
    x = ramp(64)
    no_jitter = {"brightness": 0, "contrast": 0, "jitter_p": 0}
    whole = Views((0.5,), (0.25,), crop_scale=(1, 1), crop_ratio=(1, 1), hflip=False, **no_jitter)
    torch.testing.assert_close(whole(x), x)
    mirrored = Views((0.5,), (0.25,), crop_scale=(1, 1), crop_ratio=(1, 1), **no_jitter)(x)
    flipped = (mirrored - x.flip(-1)).flatten(1).abs().amax(1) < 1e-4
    kept = (mirrored - x).flatten(1).abs().amax(1) < 1e-4
    assert (flipped ^ kept).all() and 10 < flipped.sum() < 54
    # A quarter of the area, square: half the side, so neighbouring columns are half a column apart
    # (but at the outer columns, which may lie past the outer pixels' centres: those repeat the border).
    quarter = Views((0.5,), (0.25,), crop_scale=(0.25, 0.25), crop_ratio=(1, 1), **no_jitter)(x)
    torch.testing.assert_close(quarter.diff(dim=-1)[..., 1:-1].abs(), torch.full((64, 1, 12, 9), 0.5))
    assert quarter.min() >= 0 and quarter.max() <= 11
    assert len(quarter[:, 0, 0, 0].unique()) > 32  # each crop at a place of its own


def test_jitter_changes_brightness_and_contrast_of_the_pixels():
    pixels = 0.4 + 0.2 * torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = (pixels - 0.5) / 0.25
    whole = {"crop_scale": (1, 1), "crop_ratio": (1, 1), "hflip": False}  # the crop leaves the image as it is

    def jittered(**jitter) -> torch.Tensor:
        return Views((0.5,), (0.25,), **whole, **jitter)(x) * 0.25 + 0.5

    contrast = jittered(brightness=0, contrast=0.5, jitter_p=1)
    torch.testing.assert_close(contrast.mean(dim=(1, 2, 3)), pixels.mean(dim=(1, 2, 3)))  # about the mean
    ratio = contrast.std(dim=(1, 2, 3)) / pixels.std(dim=(1, 2, 3))
    assert ((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5)).all() and ratio.std() > 0.1
    factor = (jittered(brightness=0.4, contrast=0, jitter_p=1) / pixels).flatten(1)
    torch.testing.assert_close(factor.amin(1), factor.amax(1))  # one factor per image
    assert ((factor >= 0.6 - 1e-5) & (factor <= 1.4 + 1e-5)).all() and factor[:, 0].std() > 0.1
    torch.testing.assert_close(jittered(brightness=0.4, contrast=0.4, jitter_p=0), pixels)


def test_bad_values_are_refused_when_built():
    with pytest.raises(ValueError, match=r"task.temperature=0 must be positive.*task.jitter_p=2 must be"):
        Contrastive(encoder("cnn"), ADAM, info(), temperature=0, jitter_p=2)


# digits, mlp: 19 steps an epoch; a checkpoint every 5 steps.
RUN = ["task=contrastive", "trainer.max_epochs=2", "faults.checkpoint_every_n_steps=5", *QUIET]


class Crash(BaseException):
    pass


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The views are drawn from the generator the checkpoint saves: a resumed run draws the same ones."""
    pretrain_main.run(make_config("pretrain", RUN), tmp_path / "reference")

    class CrashAt27(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 27:
                raise Crash

    build = pretrain_main.build_trainer

    def crashing(cfg, run_dir, callbacks=(), faults=None):
        return build(cfg, run_dir, [*callbacks, CrashAt27()], faults=faults)

    with monkeypatch.context() as patched:
        patched.setattr(pretrain_main, "build_trainer", crashing)
        with pytest.raises(Crash):
            pretrain_main.run(make_config("pretrain", RUN), tmp_path / "run")
    torch.manual_seed(12345)  # whatever the process drew since, the checkpoint's state is the one restored
    pretrain_main.run(make_config("pretrain", [*RUN, f"resume={tmp_path / 'run'}"]), tmp_path / "run")
    reference, resumed = (load_file(tmp_path / d / "encoder.safetensors") for d in ("reference", "run"))
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.slow
def test_the_exported_encoder_is_the_encoder_alone_and_finetuning_loads_it(tmp_path):
    pre = pretrain_main.run(make_config("pretrain", [*RUN, "backbone=cnn", "trainer.max_epochs=1"]), tmp_path / "pre")
    assert pre["task"] == "contrastive" and "train/acc_epoch" in pre["metrics"] and "val/loss" in pre["metrics"]
    path = tmp_path / "pre" / "encoder.safetensors"
    file = load_encoder(path)
    assert file.pretext_task == "contrastive" and file.metadata["pretext"]["config"]["temperature"] == 0.2
    assert all(k.startswith("blocks.") for k in load_file(path))  # no projection head
    checkpoint = torch.load(tmp_path / "pre" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(checkpoint[f"encoder.{k}"], v) for k, v in load_file(path).items())
    probe = ["schedule.unfreeze_epoch=null", "trainer.max_epochs=1", *QUIET]  # the reused weights stay as loaded
    tuned = finetune_main.run(make_config("finetune", [f"encoder={path}", *probe]), tmp_path / "ft")
    assert tuned["pretext_task"] == "contrastive" and tuned["encoder_file"] == str(path)
    trained = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(trained[f"encoder.{k}"], v) for k, v in load_file(path).items())
