"""The new pretext tasks on real data, small: each task's own loss falls, and its exported encoder
loads and fine-tunes through `python -m finetune`'s code path."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import QUIET, make_config

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.data.sources import load_source
from pretrain.encoder_file.format import load_encoder
from pretrain.tasks.gan import Generator

FAST = [*QUIET, "trainer.log_every_n_steps=1", "+trainer.limit_val_batches=1"]
pytestmark = pytest.mark.slow  # real data

SMALL_CNN = ["backbone=cnn", "backbone.channels=[8,16,32]"]
UNSEEN = "[" + ",".join(f"s{i}" for i in range(31, 41)) + "]"


def logged(run_dir, column: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def pretrain(tmp_path, overrides: list[str]):
    results = pretrain_main.run(make_config("pretrain", [*overrides, *FAST]), tmp_path / "pre")
    encoder = load_encoder(tmp_path / "pre" / "encoder.safetensors")
    assert encoder.pretext_task == results["task"]
    return results, encoder


def finetune(tmp_path, encoder_file, overrides: list[str]) -> dict:
    overrides = [f"encoder={encoder_file}", "trainer.max_epochs=3", "schedule.unfreeze_epoch=1", *overrides, *QUIET]
    return finetune_main.run(make_config("finetune", overrides), tmp_path / "ft")


SANDAL_SHIRT = ["data=fashion_mnist", "data.classes=[sandal,shirt]", "data.label_budget=200"]


def test_gan_on_fashion_mnist(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETEXT_DATA", str(real_data))
    overrides = ["data=fashion_mnist", "task=gan", *SMALL_CNN, "task.generator_width=32", "data.batch_size=64"]
    # A higher learning rate than the default 2e-4, so that 60 steps show the generator learning.
    overrides += ["task.optimizer_args.lr=0.001", "trainer.max_epochs=1", "+trainer.limit_train_batches=60"]
    pretrain(tmp_path, overrides)
    loss_d = logged(tmp_path / "pre", "train/loss_d_step")
    assert sum(loss_d[-5:]) / 5 < loss_d[0] - 0.05  # the discriminator learns to tell (from 1.37 = 2 log 2 - smoothing)
    # The generator learns too: its mean image moves towards the real one, from where a fresh one starts.
    real = load_source("fashion_mnist", str(real_data))[0].images[:2000].float().mean(0) / 255
    state = torch.load(tmp_path / "pre" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained, fresh = Generator(64, (1, 28, 28), 32), Generator(64, (1, 28, 28), 32)
    trained.load_state_dict({k[len("generator.") :]: v for k, v in state.items() if k.startswith("generator.")})
    z = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = [(g.eval()(z).mean(0) - real).abs().mean().item() for g in (trained, fresh)]
    assert gap[0] < 0.75 * gap[1]
    assert (tmp_path / "pre" / "samples" / "epoch_000.png").is_file()
    assert finetune(tmp_path, tmp_path / "pre" / "encoder.safetensors", SANDAL_SHIRT)["test_acc"] > 0.8


def test_masked_vit_on_fashion_mnist(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETEXT_DATA", str(real_data))
    overrides = ["data=fashion_mnist", "task=masked", "backbone=vit", "backbone.dim=32", "backbone.layers=2"]
    pretrain(tmp_path, [*overrides, "data.batch_size=64", "trainer.max_epochs=1", "+trainer.limit_train_batches=40"])
    loss = logged(tmp_path / "pre", "train/loss_step")
    assert sum(loss[-5:]) / 5 < 0.8 * loss[0]
    assert (tmp_path / "pre" / "masked" / "epoch_000.png").is_file()
    result = finetune(tmp_path, tmp_path / "pre" / "encoder.safetensors", SANDAL_SHIRT)
    assert result["pretext_task"] == "masked" and result["test_acc"] > 0.8


def test_greedy_autoencoder_on_fashion_mnist(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETEXT_DATA", str(real_data))
    overrides = ["data=fashion_mnist", "task=autoencoder", "task.greedy=true", "task.stage_epochs=1", *SMALL_CNN]
    _, encoder = pretrain(tmp_path, [*overrides, "trainer.max_epochs=3", "+trainer.limit_train_batches=15"])
    loss, stage = logged(tmp_path / "pre", "train/loss_step"), logged(tmp_path / "pre", "train/stage")
    assert stage == [0, 1, 2]
    for k in range(3):  # every stage lowers its own loss
        own = loss[15 * k : 15 * (k + 1)]
        assert sum(own[-3:]) / 3 < own[0]
    assert len(encoder.encoder) == 3  # the full stack
    assert finetune(tmp_path, tmp_path / "pre" / "encoder.safetensors", SANDAL_SHIRT)["test_acc"] > 0.8


def test_siamese_on_faces_then_ten_unseen_people(real_data, tmp_path, monkeypatch):
    if not (real_data / "att_faces").is_dir():
        pytest.skip("no att_faces in the data folder")
    monkeypatch.setenv("PRETEXT_DATA", str(real_data))
    overrides = ["data=faces", f"data.exclude_classes={UNSEEN}", "task=siamese", *SMALL_CNN, "data.pairs_per_image=4"]
    results, _ = pretrain(tmp_path, [*overrides, "trainer.max_epochs=2"])
    loss = logged(tmp_path / "pre", "train/loss_step")
    assert sum(loss[-5:]) / 5 < loss[0] - 0.1
    assert results["metrics"]["val/acc"] > 0.6  # verification of 5 people never seen in training; chance 0.5
    faces = ["data=faces", f"data.classes={UNSEEN}", "data.label_budget=20", "data.batch_size=10"]
    result = finetune(tmp_path, tmp_path / "pre" / "encoder.safetensors", faces)
    assert result["label_budget"] == 20 and result["data"]["classes"] == [f"s{i}" for i in range(31, 41)]
    assert result["test_acc"] > 0.2  # 10 people, 8 test images each: chance is 0.1
