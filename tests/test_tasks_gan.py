"""The GAN: the Trainer's clipping applies to each network's step, samples are saved, the generator fits its size."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import QUIET, make_config
from synthetic import ADAM, encoder, images, info, loader, trainer

import pretrain.__main__ as pretrain_main
from pretrain.encoder_file.checkpoint import export_checkpoint
from pretrain.encoder_file.format import load_encoder
from pretrain.tasks.figures import label_width, title_height
from pretrain.tasks.gan import GAN, Generator


class GradientsAtStep(L.Callback):
    """Each optimizer step: which network, the norm of its gradient, and its largest entry."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        network = "discriminator" if optimizer is trainer.optimizers[0] else "generator"
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        self.steps.append((network, norm, max(g.abs().max().item() for g in grads)))


def fit_with_clipping(tmp_path, value: float, algorithm: str) -> GradientsAtStep:
    torch.manual_seed(0)
    task = GAN(encoder("cnn"), ADAM, info())
    watch = GradientsAtStep()
    t = trainer(tmp_path, callbacks=[watch], max_steps=6, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
    x, y = images()
    t.fit(task, train_dataloaders=loader(x, y))
    assert t.gradient_clip_val == value  # the Trainer's setting is back where it was
    return watch


def test_clipping_by_norm_bounds_each_networks_gradient_at_its_step(tmp_path):
    t = 1e-3  # far below these networks' gradient norms, so every step is clipped
    watch = fit_with_clipping(tmp_path, t, "norm")
    # max_steps counts optimizer steps: 3 batches, each a discriminator then a generator step
    assert [n for n, _, _ in watch.steps] == ["discriminator", "generator"] * 3
    for _, norm, _ in watch.steps:
        assert t * 0.99 < norm <= t * (1 + 1e-4)


def test_clipping_by_value_bounds_every_entry(tmp_path):
    watch = fit_with_clipping(tmp_path, 1e-4, "value")
    assert all(largest <= 1e-4 for _, _, largest in watch.steps)
    assert {n for n, _, _ in watch.steps} == {"discriminator", "generator"}


def test_without_clipping_the_gradients_are_larger_than_that(tmp_path):
    watch = fit_with_clipping(tmp_path, 0, "norm")
    assert min(norm for _, norm, _ in watch.steps) > 1e-2  # so the bounds above come from clipping


def test_gradient_clip_val_on_the_command_line_just_works(tmp_path):
    overrides = ["task=gan", "backbone=cnn", "trainer.max_epochs=1", "+trainer.limit_train_batches=3"]
    overrides += ["trainer.gradient_clip_val=0.5", "task.spectral_norm=true", *QUIET]
    results = pretrain_main.run(make_config("pretrain", overrides), tmp_path)
    assert results["task"] == "gan"
    from PIL import Image

    with Image.open(tmp_path / "samples" / "epoch_000.png") as im:  # 8 rows of 8 samples of 8x8 digits, 4x, labeled
        labels = [f"noise {i}-{i + 7}" for i in range(0, 64, 8)]
        assert im.size == (label_width(labels) + (8 * 9 + 1) * 4, title_height("epoch 0") + 8 * 10 * 4)
    file = load_encoder(tmp_path / "encoder.safetensors")
    assert file.pretext_task == "gan" and not any("parametrizations" in k for k in file.encoder.state_dict())
    # The checkpoint (spectral norm stored reparametrized) exports to the same plain weights.
    again = load_encoder(export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "again.safetensors"))
    assert all(torch.equal(v, again.encoder.state_dict()[k]) for k, v in file.encoder.state_dict().items())


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (1, 48, 40), (3, 30, 30), (1, 112, 92)])
def test_the_generator_is_sized_to_the_images(shape):
    out = Generator(16, shape, width=16)(torch.randn(2, 16))
    assert out.shape == (2, *shape) and out.min() >= 0 and out.max() <= 1


def test_losses_are_non_saturating_and_smoothed():
    task = GAN(encoder("mlp"), ADAM, info(), label_smoothing=0.1)
    very_fake = torch.full((4,), -20.0)
    assert task.generator_loss(very_fake) > 19  # log(1 - D(G(z))) would have no gradient left here
    perfect = task.discriminator_loss(torch.full((4,), 20.0), very_fake)
    assert perfect > 1.5  # real images labelled 0.9: overconfidence costs


def test_the_sample_rows_follow_the_generator():
    torch.manual_seed(0)
    task = GAN(encoder("cnn"), ADAM, info())
    before = task.preview_rows()
    with torch.no_grad():
        next(task.generator.parameters()).add_(0.5)
    after = task.preview_rows()
    assert [label for label, _ in after][:2] == ["noise 0-7", "noise 8-15"] and len(after) == 8
    assert all(images.shape == (8, 1, 16, 16) for _, images in after)
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(before, after, strict=True))
