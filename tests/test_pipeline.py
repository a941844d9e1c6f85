"""The two entry points end to end: digits with no data folder, and real Fashion-MNIST."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUIET, make_config
from safetensors.torch import load_file

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.encoder_file.format import load_encoder


@pytest.mark.slow
def test_command_line_on_digits_with_no_data_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PRETEXT_DATA"}
    pre = subprocess.run(
        # The console script, as installed by pip; finetune below runs as `python -m finetune`.
        [Path(sys.executable).parent / "pretrain", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'pre'}", *QUIET],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert pre.returncode == 0, pre.stderr[-3000:]
    encoder = tmp_path / "pre" / "encoder.safetensors"
    assert f"encoder written to {encoder}" in pre.stdout
    assert "after 2 epochs: train/loss_epoch " in pre.stdout and ", val/loss " in pre.stdout  # the final metrics
    exported = subprocess.run(
        [sys.executable, "-m", "pretrain.export", tmp_path / "pre" / "checkpoints" / "last.ckpt", tmp_path / "x.st"],
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr
    same, again = load_file(encoder), load_file(tmp_path / "x.st")
    assert same.keys() == again.keys() and all(torch.equal(same[k], again[k]) for k in same)
    ft = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune",
            f"encoder={encoder}",
            "trainer.max_epochs=3",
            "schedule.unfreeze_epoch=1",
            f"hydra.run.dir={tmp_path / 'ft'}",
            *QUIET,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ft.returncode == 0, ft.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert f"test accuracy {results['test_acc']:.4f}" in ft.stdout
    assert results["pretext_task"] == "autoencoder" and results["label_budget"] == 100
    assert results["config"]["encoder"] == str(encoder)


def test_pretraining_lowers_the_loss_and_finetuning_beats_chance(tmp_path):
    pre = pretrain_main.run(make_config("pretrain", ["trainer.max_epochs=3", *QUIET]), tmp_path / "pre")
    log = (tmp_path / "pre" / "csv" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    val = [float(r.split(",")[header.index("val/loss")]) for r in log[1:] if r.split(",")[header.index("val/loss")]]
    assert len(val) == 3 and val[-1] < val[0]
    assert pre["metrics"]["val/loss"] == val[-1]
    rows = list(csv.DictReader((tmp_path / "pre" / "csv" / "metrics.csv").open()))
    train = [(int(r["epoch"]), float(r["train/loss_epoch"])) for r in rows if r["train/loss_epoch"]]
    assert [epoch for epoch, _ in train] == [0, 1, 2] and train[-1][1] < train[0][1]
    assert pre["metrics"]["train/loss_epoch"] == train[-1][1]
    knn = [float(r["val/knn_acc"]) for r in rows if r["val/knn_acc"]]  # conf/online_eval: every epoch by default
    assert len(knn) == 3 and pre["metrics"]["val/knn_acc"] == knn[-1] > 0.5  # chance is 0.1
    scratch = finetune_main.run(make_config("finetune", ["trainer.max_epochs=20", *QUIET]), tmp_path / "s")
    transfer = finetune_main.run(
        make_config(
            "finetune", [f"encoder={tmp_path / 'pre' / 'encoder.safetensors'}", "trainer.max_epochs=10", *QUIET]
        ),
        tmp_path / "t",
    )
    for r in (scratch, transfer):
        assert r["test_acc"] > 0.5  # chance is 0.1
    assert transfer["encoder_file"] and scratch["encoder_file"] is None
    assert scratch["num_test"] == transfer["num_test"] == 450  # the digits' test split: a quarter of 1,797


def test_a_linear_probe_keeps_every_reused_weight(tmp_path):
    """schedule.unfreeze_epoch=null: the head trains on frozen features to the last epoch."""
    pretrain_main.run(make_config("pretrain", ["trainer.max_epochs=3", *QUIET]), tmp_path / "pre")
    encoder = tmp_path / "pre" / "encoder.safetensors"
    overrides = [f"encoder={encoder}", "schedule.unfreeze_epoch=null", "trainer.max_epochs=10", *QUIET]
    probe = finetune_main.run(make_config("finetune", overrides), tmp_path / "probe")
    assert probe["test_acc"] > 0.5  # chance is 0.1
    trained = torch.load(tmp_path / "probe" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reused = load_file(encoder)
    assert all(torch.equal(trained[f"encoder.{k}"], v) for k, v in reused.items())


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    overrides = ["trainer.max_epochs=2", "seed=7", *QUIET]
    a = pretrain_main.run(make_config("pretrain", overrides), tmp_path / "a")
    b = pretrain_main.run(make_config("pretrain", overrides), tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    wa, wb = load_file(tmp_path / "a" / "encoder.safetensors"), load_file(tmp_path / "b" / "encoder.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = pretrain_main.run(make_config("pretrain", ["trainer.max_epochs=2", "seed=8", *QUIET]), tmp_path / "c")
    assert c["metrics"] != a["metrics"]


@pytest.mark.slow
def test_fashion_mnist_model_a_then_model_b(real_data, tmp_path, monkeypatch):
    """Géron's transfer study, small: supervised on the 8 other classes, then 200 sandal/shirt labels."""
    monkeypatch.setenv("PRETEXT_DATA", str(real_data))
    pre = pretrain_main.run(
        make_config(
            "pretrain",
            [
                "data=fashion_mnist",
                "data.exclude_classes=[sandal,shirt]",
                "task=supervised",
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=60",
                *QUIET,
            ],
        ),
        tmp_path / "a",
    )
    assert pre["metrics"]["val/acc"] > 0.7  # 8 classes: chance is 0.125
    meta = load_encoder(tmp_path / "a" / "encoder.safetensors").metadata
    assert meta["data"]["classes"] == [
        "t-shirt_top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sneaker",
        "bag",
        "ankle boot",
    ]
    results = finetune_main.run(
        make_config(
            "finetune",
            [
                "data=fashion_mnist",
                "data.classes=[sandal,shirt]",
                "data.label_budget=200",
                "data.batch_size=32",
                f"encoder={tmp_path / 'a' / 'encoder.safetensors'}",
                "trainer.max_epochs=10",
                *QUIET,
            ],
        ),
        tmp_path / "b",
    )
    assert results["label_budget"] == 200 and results["data"]["classes"] == ["sandal", "shirt"]
    assert results["test_acc"] > 0.9  # chance is 0.5; the official test split has 2,000 of these images
