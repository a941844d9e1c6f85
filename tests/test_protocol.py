"""The evaluation protocol: eval modes (finetune, probe, knn), labels per class, and its report."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from helpers import QUIET, REPO, hydra_command, make_config
from safetensors.torch import load_file
from test_report import T975, results

import finetune.__main__ as finetune_main
from finetune.checks import CHECKS
from finetune.report import protocol
from finetune.report.command import main, make_report, view
from finetune.report.render import markdown
from finetune.report.stats import paired_p_value
from pretrain.config.validate import ConfigError, validate_config
from pretrain.data.images import DataError
from pretrain.data.module import ImageDataModule
from pretrain.encoder_file.format import save_encoder
from pretrain.encoders import build_encoder
from pretrain.run.callbacks.online_eval import knn_predict, pooled_features
from pretrain.run.files import write_json

PER_CLASS = ["data.label_budget=null", "data.labels_per_class=5"]


# --- labels per class ------------------------------------------------------------------------


def test_labels_per_class_is_exactly_that_many_of_every_class():
    per_class = ImageDataModule("digits", labels_per_class=3, val_size=0, seed=4)
    per_class.setup()
    assert torch.bincount(per_class.train_set.labels).tolist() == [3] * 10
    # The same draw as the stratified budget of that many times the classes, so the two pair by seed.
    budget = ImageDataModule("digits", label_budget=30, val_size=0, seed=4)
    budget.setup()
    assert torch.equal(per_class.train_set.images, budget.train_set.images)
    two = ImageDataModule("digits", classes=[3, 7], labels_per_class=4, val_size=0, seed=0)
    two.setup()
    assert torch.bincount(two.train_set.labels).tolist() == [4, 4]
    with pytest.raises(
        DataError, match=r"^data.labels_per_class=1000: class '\d' has only 1\d\d training images: use at most 1\d\d$"
    ):
        ImageDataModule("digits", labels_per_class=1000, val_size=0).setup()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["data.labels_per_class=5"],  # conf/finetune.yaml sets data.label_budget=100
            "data.label_budget=100 and data.labels_per_class=5 both say how many labeled images to train on: keep "
            "one, e.g. data.label_budget=null data.labels_per_class=5",
        ),
        (
            ["data.label_budget=null", "data.labels_per_class=0"],
            "data.labels_per_class=0 must be at least 1, or null: data.label_budget decides",
        ),
        (["eval=train"], "eval='train' must be one of finetune, probe, knn"),
        (["knn.k=0"], "knn.k=0 must be at least 1, e.g. knn.k=20"),
        (["knn.temperature=0"], "knn.temperature=0 must be positive, e.g. knn.temperature=0.07"),
    ],
)
def test_bad_protocol_values_are_named_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match="invalid configuration:\n  ") as err:
        validate_config(make_config("finetune", overrides), "finetune", CHECKS)
    assert str(err.value) == f"invalid configuration:\n  {message}"


def test_a_probe_or_knn_has_no_unfreeze_epoch_to_check():
    """schedule.unfreeze_epoch past the last epoch is refused for fine-tuning only: nothing unfreezes otherwise."""
    late = ["encoder=e.safetensors", "trainer.max_epochs=2", "schedule.unfreeze_epoch=5"]
    for mode in ("probe", "knn"):
        validate_config(make_config("finetune", [*late, f"eval={mode}"]), "finetune", CHECKS)
    with pytest.raises(ConfigError, match="schedule.unfreeze_epoch=5 is not before the last epoch"):
        validate_config(make_config("finetune", late), "finetune", CHECKS)
    validate_config(make_config("finetune", ["experiment=protocol", "encoder=e.safetensors"]), "finetune", CHECKS)


def test_both_budgets_on_the_command_line_exit_2_with_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["data.label_budget=50", "data.labels_per_class=5", *QUIET]
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: invalid configuration:\n  data.label_budget=50 and data.labels_per_class=5 both say how many labeled "
        "images to train on: keep one, e.g. data.label_budget=null data.labels_per_class=5\n"
    )
    assert list(tmp_path.iterdir()) == []  # no run folder


# --- eval modes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    """A cnn with batch norm for the digits (random weights: what matters is that they are kept)."""
    path = tmp_path_factory.mktemp("encoder") / "cnn.safetensors"
    torch.manual_seed(3)
    encoder = build_encoder("cnn", (1, 8, 8), channels=[8, 16])
    save_encoder(path, encoder, mean=[0.3], std=[0.4], pretext={"task": "t"}, data={"name": "digits"})
    return path


@pytest.mark.slow
def test_knn_scores_the_test_split_against_the_labeled_images_without_training(tmp_path, cnn_file):
    got = finetune_main.run(make_config("finetune", [f"encoder={cnn_file}", "eval=knn", *PER_CLASS, *QUIET]), tmp_path)
    # The same measure, computed here from its parts: the bank is the 50 labeled images, the test split is scored.
    data = ImageDataModule("digits", labels_per_class=5, val_size=0, seed=0, mean=[0.3], std=[0.4])
    data.setup()
    encoder = build_encoder("cnn", (1, 8, 8), channels=[8, 16])
    encoder.load_state_dict(load_file(cnn_file))
    encoder.eval()
    cpu = torch.device("cpu")
    bank, test = (pooled_features(encoder, s.images, data.normalize, 64, cpu) for s in (data.train_set, data.test_set))
    expected = (knn_predict(test, bank, data.train_set.labels, 10) == data.test_set.labels).float().mean().item()
    assert got["test_acc"] == pytest.approx(expected, abs=1e-6) and expected > 0.4  # chance is 0.1
    assert {k: got[k] for k in ("eval", "encoder_weights", "encoder_trained", "labels_per_class", "num_classes")} == {
        "eval": "knn",
        "encoder_weights": "pretrained",
        "encoder_trained": False,
        "labels_per_class": 5,
        "num_classes": 10,
    }
    assert got["label_budget"] == 50 and "test_loss" not in got
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing to resume
    assert json.loads((tmp_path / "results.json").read_text())["test_acc"] == got["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["file", "none"])
def test_a_probe_trains_the_head_and_keeps_every_encoder_weight(tmp_path, cnn_file, encoder):
    """encoder=none under eval=probe: the random weights the seed draws, kept as they are (the floor)."""
    overrides = [f"encoder={cnn_file if encoder == 'file' else 'none'}", "eval=probe", "backbone=cnn"]
    overrides += [
        "backbone.channels=[8,16]",
        "trainer.max_epochs=3",
        "optimizer.lr=0.01",
        "schedule.unfreeze_epoch=0",
        *QUIET,
    ]
    got = finetune_main.run(make_config("finetune", overrides), tmp_path)
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    if encoder == "file":
        start = load_file(cnn_file)
    else:
        L.seed_everything(0, verbose=False)  # the run's seed: the same draw as the run's
        start = build_encoder("cnn", (1, 8, 8), channels=[8, 16], activation="relu", batch_norm=True).state_dict()
    assert start and all(torch.equal(trained[f"encoder.{k}"], v) for k, v in start.items())  # buffers too
    assert got["eval"] == "probe" and got["encoder_trained"] is False and got["test_acc"] > 0.3  # chance is 0.1
    assert got["encoder_weights"] == ("pretrained" if encoder == "file" else "random")


# --- the report ------------------------------------------------------------------------------

# test_acc by (eval, labels per class, encoder) over seeds 0, 1, 2
ACC = {
    ("knn", 1, None): [0.50, 0.52, 0.55],
    ("knn", 1, "aa"): [0.60, 0.61, 0.66],
    ("knn", 10, None): [0.70, 0.71, 0.72],
    ("knn", 10, "aa"): [0.75, 0.78, 0.74],
    ("finetune", 1, None): [0.40, 0.45, 0.50],
    ("finetune", 1, "aa"): [0.62, 0.60, 0.64],
    ("finetune", 10, None): [0.80, 0.81, 0.79],
    ("finetune", 10, "aa"): [0.83, 0.82, 0.84],
}


def protocol_sweep(folder):
    i = 0
    for (mode, per_class, sha), accs in ACC.items():
        for seed, acc in enumerate(accs):
            run = results(seed, acc, "/e/aa.safetensors" if sha else None, sha, eval=mode)
            run["config"]["data"].update(label_budget=None, labels_per_class=per_class)
            run.update(eval=mode, labels_per_class=per_class, num_classes=10, label_budget=10 * per_class)
            write_json(folder / str(i) / "results.json", run)
            i += 1
    return folder


def test_the_report_of_a_protocol_sweep_pairs_by_mode_labels_and_seed(tmp_path, capsys):
    sweep = protocol_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--min-seeds", "3"]) == 0
    printed = capsys.readouterr().out
    table = (sweep / "report.md").read_text()
    assert table in printed
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def cell(values, signed=False):
        mean = sum(values) / 3
        half = T975[2] * math.sqrt(sum((v - mean) ** 2 for v in values) / 2) / math.sqrt(3)
        f = "{:+.2f}" if signed else "{:.2f}"
        return f"{f.format(100 * mean)} [{f.format(100 * (mean - half))}, {f.format(100 * (mean + half))}]"

    # the baselines are named by what encoder=none is in each mode; knn's panel comes first
    knn_none, ft_none = ACC["knn", 1, None], ACC["finetune", 1, None]
    assert f"| knn | random weights | {cell(knn_none)} | {cell(ACC['knn', 10, None])} |" in table
    assert f"| finetune | scratch | {cell(ft_none)} | {cell(ACC['finetune', 10, None])} |" in table
    assert table.index("| knn | random weights |") < table.index("| finetune | scratch |")
    # knn, 1 per class: differences by seed 0.10, 0.09, 0.11; finetune, 10 per class: 0.03, 0.01, 0.05
    knn_diff = cell([0.10, 0.09, 0.11], signed=True)
    ft_diff = cell([0.03, 0.01, 0.05], signed=True)
    assert knn_diff == "+10.00 [+7.52, +12.48]"
    assert f"| knn | autoencoder | {knn_diff} (3 pairs) | " in table
    assert f"| finetune | autoencoder | {cell([0.22, 0.15, 0.14], signed=True)} (3 pairs) | {ft_diff} (3 pairs) |" in (
        table
    )
    rows = {(r["eval"], r["labels_per_class"], r["configuration"].split(",")[0]): r for r in _csv(sweep / "report.csv")}
    row = rows["knn", "1", "autoencoder"]
    assert row["baseline"].startswith("random weights") and float(row["diff_mean"]) == pytest.approx(0.10)
    assert float(row["p_value"]) == pytest.approx(paired_p_value([0.10, 0.09, 0.11]))
    assert rows["finetune", "10", "scratch"]["baseline"] == ""


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_one_budget_and_one_mode_is_the_usual_report(tmp_path):
    runs = make_report([protocol_sweep(tmp_path / "sweep")])
    assert protocol.is_protocol(runs)
    runs.configurations = [
        c for c in runs.configurations if c.runs[0].eval == "knn" and c.runs[0].labels_per_class == 1
    ]
    assert not protocol.is_protocol(runs)
    assert view(runs)[0] is markdown


def test_an_encoder_without_a_baseline_and_a_missing_budget_are_shown(tmp_path):
    sweep = protocol_sweep(tmp_path / "sweep")
    for path in sweep.rglob("results.json"):  # no encoder=none under finetune at 10 per class
        run = json.loads(path.read_text())
        if run["eval"] == "finetune" and run["labels_per_class"] == 10 and run["encoder_sha256"] is None:
            path.unlink()
    table = protocol.markdown(make_report([sweep]))
    assert f"| finetune | scratch | {100 * sum(ACC['finetune', 1, None]) / 3:.2f} [" in table
    assert table.split("| finetune | scratch |")[1].split("\n")[0].endswith(" |  |")  # nothing at 10 per class
    assert table.split("| finetune | autoencoder |")[-1].split("\n")[0].endswith(" | no baseline |")


@pytest.mark.slow
def test_the_protocol_command_on_the_digits(tmp_path, cnn_file):
    """experiment=protocol as a user runs it (on the digits, k-NN only: seconds), then the report."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep"
    argv = ["experiment=protocol", "data=digits", "eval=knn", "data.labels_per_class=1,5", "seed=0,1"]
    argv += [f"encoder={cnn_file},none", "backbone.channels=[8,16]", f"hydra.sweep.dir={sweep}", *QUIET]
    run = subprocess.run([sys.executable, "-m", "finetune", "-m", *argv], cwd=tmp_path, env=env, capture_output=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list(sweep.rglob("results.json"))) == 8
    out = subprocess.run([sys.executable, "-m", "finetune.report", str(sweep)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| knn | random weights |" in out.stdout and "| knn | t | " in out.stdout
    assert "(2 pairs)" in out.stdout and (sweep / "report.png").exists()
