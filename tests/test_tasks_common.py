"""Every new pretext task, on every encoder family: training changes the encoder and lowers the
task's own loss; the exported encoder, loaded back, computes exactly what the task's did."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic import ADAM, encoder, images, info, loader, snapshot, trainer

from pretrain.encoder_file.format import load_encoder, save_encoder
from pretrain.run.callbacks.channels_last import ChannelsLast
from pretrain.tasks.autoencoder import Autoencoder
from pretrain.tasks.contrastive import Contrastive
from pretrain.tasks.gan import GAN
from pretrain.tasks.masked import MaskedPrediction
from pretrain.tasks.siamese import Siamese

TASKS = ["gan", "masked", "siamese", "greedy", "contrastive"]
SHAPE = (1, 8, 8)  # small: these tests train 20 models


def build(task: str, arch: str, **kw):
    enc, data = encoder(arch, SHAPE), info(shape=SHAPE)
    if task == "gan":
        return GAN(enc, ADAM, data, **kw)
    if task == "masked":
        return MaskedPrediction(enc, ADAM, data, **kw)
    if task == "siamese":
        return Siamese(enc, ADAM, data, **kw)
    if task == "contrastive":
        return Contrastive(enc, ADAM, data, **kw)
    return Autoencoder(enc, ADAM, data, greedy=True, stage_epochs=50, **kw)


def task_loss(module, task: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """The task's own loss on a fixed batch, with the same randomness every time."""
    with torch.no_grad():
        if task == "gan":  # the discriminator's: it is the network that gets exported
            z = torch.randn(len(x), module.latent_dim, generator=torch.Generator().manual_seed(0))
            return module.discriminator_loss(module.discriminate(x), module.discriminate(module.generate(z))).item()
        if task == "masked":
            return module.task_loss(x, torch.Generator().manual_seed(0)).item()
        if task == "siamese":
            pairs, same = next(iter(loader(x, y, batch_size=len(y), pairs=True)))
            return F.binary_cross_entropy_with_logits(module(pairs)[0], same.float()).item()
        if task == "contrastive":
            return module.task_loss(x, torch.Generator().manual_seed(0))[0].item()
        return module.stage_loss(x).item()


def fit(module, tmp_path, task: str, steps: int = 16, batch_size: int = 32, callbacks=()):
    x, y = images(shape=SHAPE)
    # The GAN makes two optimizer steps per batch, and max_steps counts optimizer steps.
    t = trainer(tmp_path, callbacks, max_epochs=1000, max_steps=2 * steps if task == "gan" else steps)
    t.fit(module, train_dataloaders=loader(x, y, batch_size, pairs=task == "siamese"))
    return t


@pytest.mark.parametrize("arch", ["mlp", "cnn", "vit"])
@pytest.mark.parametrize("task", TASKS)
def test_training_changes_the_encoder_and_lowers_the_loss_and_the_export_matches(task, arch, tmp_path):
    torch.manual_seed(0)
    module = build(task, arch)
    x, y = images(shape=SHAPE)
    before_state, before_loss = snapshot(module.encoder), task_loss(module, task, x, y)
    fit(module, tmp_path, task)
    assert task_loss(module, task, x, y) < before_loss
    after = snapshot(module.encoder)
    assert any(not torch.equal(before_state[k], after[k]) for k in after)

    path = save_encoder(
        tmp_path / "e.safetensors",
        module.exported_encoder(),
        mean=[0.0],
        std=[1.0],
        pretext={"task": task},
        data={"name": "synthetic"},
    )
    loaded = load_encoder(path).encoder
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), module.encoder(x))
    assert len(loaded) == len(module.encoder)  # the full stack


def test_gan_with_spectral_norm_exports_plain_weights_that_compute_the_same(tmp_path):
    torch.manual_seed(0)
    module = build("gan", "cnn", spectral_norm=True)
    assert any("parametrizations" in k for k in module.encoder.state_dict())
    fit(module, tmp_path, "gan", steps=5)
    path = save_encoder(
        tmp_path / "e.safetensors",
        module.exported_encoder(),
        mean=[0.0],
        std=[1.0],
        pretext={"task": "gan"},
        data={"name": "synthetic"},
    )
    loaded = load_encoder(path).encoder
    module.eval()
    x, _ = images(shape=SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module.encoder(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_a_resnet(task, tmp_path):
    module = build(task, "resnet18")
    before = snapshot(module.encoder)
    fit(module, tmp_path, task, steps=1, batch_size=4)
    after = snapshot(module.encoder)
    assert any(not torch.equal(before[k], after[k]) for k in after)


@pytest.mark.parametrize("task", ["gan", "greedy"])
def test_under_ddp_they_ask_for_unused_parameters_to_be_allowed(task):
    from types import SimpleNamespace

    module = build(task, "mlp")
    ddp = SimpleNamespace(_ddp_kwargs={})
    module._trainer = SimpleNamespace(world_size=2, strategy=ddp, max_epochs=1000, current_epoch=0)
    start = (lambda: module.setup("fit")) if task == "gan" else module.on_fit_start
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        start()
    ddp._ddp_kwargs["find_unused_parameters"] = True
    start()


@pytest.mark.parametrize("task", TASKS)
def test_channels_last_trains_in_nhwc_and_exports_a_file_that_computes_the_same(task, tmp_path):
    torch.manual_seed(0)
    module = build(task, "cnn")
    x, y = images(shape=SHAPE)
    before = task_loss(module, task, x, y)
    fit(module, tmp_path, task, callbacks=[ChannelsLast()])
    convolutions = [p for p in module.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous() for p in convolutions)  # the order really changed
    assert task_loss(module, task, x, y) < before

    exported = module.exported_encoder()
    path = save_encoder(
        tmp_path / "e.safetensors", exported, mean=[0.0], std=[1.0], pretext={"task": task}, data={"name": "synthetic"}
    )
    loaded = load_encoder(path).encoder
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module.encoder(x))
