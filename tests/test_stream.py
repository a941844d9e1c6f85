"""Prepared collections (python -m pretrain.prepare) and data=stream: the same selection and images as the
in-memory data, damaged or half-finished preparations named, every task and fine-tuning on streamed data,
DDP shares, and a run killed mid-epoch resuming to the same weights. All prepare with litdata's worker
processes (spawn): slow."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import QUIET, REPO, make_config
from safetensors.torch import load_file
from synthetic import image_folder

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.data.images import DataError
from pretrain.data.module import ImageDataModule
from pretrain.data.prepare import prepare
from pretrain.data.stream import StreamDataModule, open_prepared

pytestmark = pytest.mark.slow
SIZE = (12, 10)


def prepared_copy(tmp_path, **kw):
    src = image_folder(tmp_path / "src", size=SIZE, **kw)
    return src, prepare(str(src), tmp_path / "out", workers=1), tmp_path / "out"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A folder of 3 classes x 40 PNG/JPEG images and its preparation."""
    root = tmp_path_factory.mktemp("collection")
    src, meta, out = prepared_copy(root, per_class=40)
    return src, out


def stream(out, **kw) -> StreamDataModule:
    dm = StreamDataModule(name="stream", root=str(out), num_workers=0, **kw)
    dm.setup("fit")
    return dm


def test_the_index_chooses_what_the_in_memory_folder_chooses(collection):
    src, out = collection
    choice = {"classes": ["c2", "c0"], "label_budget": 20, "val_size": 6, "seed": 3}
    streamed = stream(out, **choice)
    memory = ImageDataModule(name="folder", root=str(src), image_size=SIZE, grayscale=False, **choice)
    memory.setup("fit")
    assert streamed.info.classes == memory.info.classes == ("c2", "c0")
    assert streamed.info.input_shape == memory.info.input_shape == (3, *SIZE)
    for split in ("train_set", "val_set", "test_set"):
        s, m = getattr(streamed, split), getattr(memory, split)
        assert torch.equal(s.labels, m.labels), split
        assert torch.equal(s.images.decode(), m.images), split  # the same pixels, in the same order
    assert len(streamed.train_set.labels) == 20 and torch.bincount(streamed.train_set.labels).tolist() == [10, 10]
    # The loader serves each training image once per epoch, with its selected label.
    batches = list(streamed.train_dataloader())
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.uint8 and len(labels) == 20
    key = {bytes(x.numpy()): int(y) for x, y in zip(memory.train_set.images, memory.train_set.labels, strict=True)}
    assert {bytes(x.numpy()): int(y) for x, y in zip(images, labels, strict=True)} == key
    meta = open_prepared(str(out)).meta
    assert meta["classes"] == ["c0", "c1", "c2"]
    # The fixed test fifth is stored apart: the training split is read in long runs, not one per few images.
    assert meta["splits"] == {"train": {"count": 96, "bad": 0}, "test": {"count": 24, "bad": 0}}
    assert torch.equal(stream(out, val_size=0).train_set.images.positions, torch.arange(96))  # read whole


def test_a_training_batch_of_one_is_left_out(collection):
    _, out = collection
    dm = stream(out, val_size=3, batch_size=92, eval_batch_size=2)  # 96 - 3 training images: 92 + 1
    loader = dm.train_dataloader()
    assert [len(y) for _, y in loader] == [92] and len(loader) == 1
    assert [len(y) for _, y in stream(out, val_size=3, batch_size=91).train_dataloader()] == [91, 2]
    assert [len(y) for _, y in dm.val_dataloader()] == [2, 1]  # evaluation reads every image


def test_unreadable_files_are_named_and_an_error_keeps_nothing(tmp_path):
    src = image_folder(tmp_path / "src", per_class=2)
    (src / "c1" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)1 unreadable file\(s\).*c1/broken.png.*--on-bad-file=skip"):
        prepare(str(src), tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()
    meta = prepare(str(src), tmp_path / "out", workers=1, on_bad_file="skip")
    counts = [(s["count"], s["bad"]) for s in meta["splits"].values()]
    assert [sum(c) for c in zip(*counts, strict=True)] == [6, 1] and "broken.png" in meta["bad_files"][0]
    dm = stream(tmp_path / "out", val_size=0)
    assert len(dm.train_set.labels) + len(dm.test_set.labels) == 6  # the bad file is never chosen


def test_a_half_finished_preparation_is_refused_and_a_rerun_finishes_it(tmp_path):
    src, _, out = prepared_copy(tmp_path, per_class=3)
    (out / "pretext.json").unlink()
    (out / ".pretext-partial").write_text("interrupted")
    with pytest.raises(DataError, match=rf"{out} is a half-finished preparation \(no pretext.json\)"):
        stream(out)
    prepare(str(src), out, workers=1)  # starts again from scratch
    assert stream(out, val_size=0).info.num_train == 6 and not (out / ".pretext-partial").exists()
    with pytest.raises(DataError, match="already prepared"):
        prepare(str(src), out, workers=1)
    with pytest.raises(DataError, match="exists and is not a preparation"):
        prepare(str(src), src, workers=1)  # never deletes a folder it did not make


def test_a_damaged_shard_is_named(tmp_path):
    _, _, out = prepared_copy(tmp_path, per_class=3)
    shard = next((out / "train").glob("chunk-*.bin"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"shard {shard} is damaged \(it has \d+ bytes, not \d+\)"):
        stream(out)


def test_csv_and_unlabeled_folders_and_max_side(tmp_path):
    src = image_folder(tmp_path / "src", classes=2, per_class=3, size=(40, 20))
    rows = ["path,label"] + [f"src/c{c}/{i}.{'png' if i % 2 else 'jpg'},k{c}" for c in (0, 1) for i in range(3)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    start_method = multiprocessing.get_start_method(allow_none=True)
    meta = prepare(str(tmp_path / "list.csv"), tmp_path / "csv", workers=1, max_side=16)
    assert meta["classes"] == ["k0", "k1"]
    assert multiprocessing.get_start_method(allow_none=True) == start_method  # litdata's spawn stays inside
    index = open_prepared(str(tmp_path / "csv")).index["train"]
    assert set(index["heights"]) == {16} and set(index["widths"]) == {8}  # the longer side shrunk to 16
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (src / "c0").iterdir():
        p.rename(flat / p.name)
    assert prepare(str(flat), tmp_path / "unlabeled", workers=1)["classes"] == []
    dm = stream(tmp_path / "unlabeled", val_size=0)
    assert dm.info.classes == () and dm.train_set.labels.tolist() == [-1, -1, -1]


def test_an_image_per_class_is_not_all_held_out_for_testing(tmp_path):
    src = image_folder(tmp_path / "src", classes=2, per_class=1)
    assert list(prepare(str(src), tmp_path / "out", workers=1)["splits"]) == ["train"]


def test_the_command_line(tmp_path):
    src = image_folder(tmp_path / "src", per_class=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "pretrain.prepare", str(src), str(tmp_path / "out"), "--workers", "1"]
    done = subprocess.run(run, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Create an account" not in done.stdout + done.stderr  # litdata's invitation is kept from users
    assert done.stdout.strip().endswith(f"data=stream data.root={tmp_path / 'out'}")
    again = subprocess.run(run, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "already prepared" in again.stderr


# In the training process (no workers to spawn): the tasks and fine-tuning; the tests below that resume or
# share across ranks decode in workers.
STREAM = ["data=stream", "data.num_workers=0", "data.val_size=12", "data.batch_size=16", *QUIET]


@pytest.mark.parametrize("task", ["autoencoder", "contrastive", "gan", "masked", "siamese", "supervised"])
def test_every_task_trains_on_streamed_data(collection, tmp_path, task):
    _, out = collection
    extra = ["data.val_size=0"] if task == "siamese" else []  # pairs of the training images only
    backbone = ["backbone=cnn", "data.image_size=[12,12]"] if task == "masked" else []  # decoded to a new size
    cfg = make_config(
        "pretrain", [*STREAM, f"data.root={out}", f"task={task}", *backbone, "trainer.max_epochs=1", *extra]
    )
    results = pretrain_main.run(cfg, tmp_path)
    assert (tmp_path / "encoder.safetensors").is_file() and all(np.isfinite(list(results["metrics"].values())))


def test_finetuning_on_a_labeled_subset_of_streamed_data(collection, tmp_path):
    _, out = collection
    pretrain_main.run(make_config("pretrain", [*STREAM, f"data.root={out}", "trainer.max_epochs=1"]), tmp_path / "p")
    overrides = [*STREAM, f"data.root={out}", f"encoder={tmp_path / 'p' / 'encoder.safetensors'}"]
    overrides += ["data.classes=[c0,c2]", "data.label_budget=10", "data.val_size=4", "trainer.max_epochs=2"]
    overrides += ["schedule.unfreeze_epoch=1"]
    results = finetune_main.run(make_config("finetune", overrides), tmp_path / "f")
    assert results["num_test"] == 16  # the fixed fifth of the two classes' 80 images
    assert (
        results["label_budget"] == 10 and results["data"]["classes"] == ["c0", "c2"] and 0 <= results["test_acc"] <= 1
    )


def test_ddp_ranks_share_each_epoch(collection, tmp_path):
    """Two CPU processes: training shares are disjoint and equal (litdata's drop_last: every rank takes the same
    number of steps), leaving out fewer than ranks x batch size images; evaluation covers every image once."""
    _, out = collection
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    done = subprocess.run(
        [sys.executable, REPO / "tests" / "stream_ddp_probe.py", str(out), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for epoch in (0, 1):
        a, b = (s["train"][epoch] for s in seen)
        assert len(a) == len(b) == len(set(a)) and not set(a) & set(b)
        assert set(a) | set(b) <= set(seen[0]["train_set"]) and len(a) + len(b) > len(seen[0]["train_set"]) - 2 * 8
    assert seen[0]["train"][0] != seen[0]["train"][1]  # reshuffled each epoch
    assert sorted(seen[0]["val"] + seen[1]["val"]) == sorted(seen[0]["val_set"])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(collection, tmp_path):
    _, out = collection
    run = [*STREAM, f"data.root={out}", "trainer.max_epochs=2", "faults.checkpoint_every_n_steps=2", "data.hflip=true"]
    run += ["data.num_workers=1"]  # the loader's position in its worker goes into the checkpoint
    reference = tmp_path / "reference"
    pretrain_main.run(make_config("pretrain", run), reference)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "run"
    fault = [sys.executable, REPO / "tests" / "fault_injection.py", "10", "SIGKILL", *run, f"hydra.run.dir={run_dir}"]
    killed = subprocess.run(fault, cwd=tmp_path, env=env, capture_output=True, text=True)  # epoch 1 of 7-step epochs
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] in (8, 10)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["num_samples_yielded"] > 0  # mid-epoch
    resumed = subprocess.run(
        [sys.executable, "-m", "pretrain", f"resume={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(run_dir / "encoder.safetensors"), load_file(reference / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
