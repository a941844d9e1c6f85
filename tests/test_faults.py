"""Runs survive faults: SIGKILL and SIGTERM mid-epoch, then resume=RUN ends with the same weights
as an uninterrupted run; a NaN loss stops the run and keeps the last good checkpoint; every
checkpoint write is atomic and every checkpoint load unpickles nothing but tensors and values."""

from __future__ import annotations

import errno
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from fault_injection import full_disk
from helpers import QUIET, REPO, make_config
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

import pretrain.__main__ as pretrain_main
from pretrain.config.validate import ConfigError
from pretrain.data.batching import EpochPermutation, TensorBatches
from pretrain.run.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from pretrain.run.callbacks.last_checkpoint import LastCheckpoint
from pretrain.run.callbacks.random_state import collect, restore
from pretrain.run.files import AtomicCheckpointIO, NoSpaceError, remove_stale_temporaries
from pretrain.run.resume import check_resumable, checkpoint_to_resume, resumed_config
from pretrain.run.trainer import build_trainer

# 3 epochs of 19 steps; augmentation and dropout draw random numbers every step, so a resumed
# run matches only if it restores the data position and the random state exactly.
RUN = [
    "trainer.max_epochs=3",
    "faults.checkpoint_every_n_steps=5",
    "trainer.log_every_n_steps=10",  # step values at steps 9, 19, ...: some before the stop, some after
    "data.hflip=true",
    "data.max_shift=1",
    "backbone.dropout=0.1",
    *QUIET,
]


def weights(run_dir: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "encoder.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint(run_dir: pathlib.Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def dead_pid() -> int:
    """The process id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def interrupted(tmp_path: pathlib.Path, step: int, signame: str, run_dir: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, REPO / "tests" / "fault_injection.py", str(step), signame, *RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )


def resume_command(run_dir: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``python -m pretrain resume=RUN_DIR`` in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pretrain", f"resume={run_dir}"], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("reference")
    pretrain_main.run(make_config("pretrain", RUN), run_dir)
    return weights(run_dir)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = interrupted(tmp_path, 27, "SIGKILL", run_dir)  # epoch 1, batch 8 of 19
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = checkpoint(run_dir)
    # The step-25 checkpoint, or on a loaded machine the step-20 one if the background write of
    # step 25 had not finished when the kill came; either is mid-epoch (epoch 1 starts at step 19).
    assert state["global_step"] in (20, 25), state["global_step"]
    batches = state["global_step"] - 19
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": batches}]
    assert not (run_dir / "encoder.safetensors").exists()
    stale = run_dir / "checkpoints" / f".last.ckpt.{dead_pid()}.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = resume_command(run_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(weights(run_dir), uninterrupted)  # bit for bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no second run folder
    assert sorted(p.name for p in stale.parent.iterdir()) == ["last.ckpt"]
    assert (run_dir / ".hydra" / "resume" / "overrides.yaml").read_text().strip() == f"- resume={run_dir}"
    assert "trainer.max_epochs=3" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # the original, kept


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    stopped = interrupted(tmp_path, 27, "SIGTERM", run_dir)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert f"SIGTERM: saved {run_dir / 'checkpoints' / 'last.ckpt'} at step 27" in stopped.stderr
    assert f"continue with: python -m pretrain resume={run_dir}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert checkpoint(run_dir)["global_step"] == 27
    pretrain_main.run(make_config("pretrain", [*RUN, f"resume={run_dir}"]), run_dir)
    assert same(weights(run_dir), uninterrupted)
    # The metrics log of the first part is continued, not replaced.
    steps = [r.split(",")[2] for r in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    assert "9" in steps and "56" in steps


class Crash(BaseException):
    pass


class At(L.Callback):
    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            self.action(pl_module)


def with_callback(monkeypatch, callback: L.Callback) -> None:
    build = pretrain_main.build_trainer
    monkeypatch.setattr(
        pretrain_main, "build_trainer", lambda c, d, cb=(), faults=None: build(c, d, [*cb, callback], faults=faults)
    )


def test_without_step_checkpoints_last_ckpt_is_written_at_every_epoch_end(tmp_path, monkeypatch):
    def crash(_):
        raise Crash

    with_callback(monkeypatch, At(25, crash))
    with pytest.raises(Crash):
        pretrain_main.run(make_config("pretrain", [*RUN, "faults.checkpoint_every_n_steps=null"]), tmp_path)
    state = checkpoint(tmp_path)
    assert state["global_step"] == 19 and state["epoch"] == 0  # the end of epoch 0


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def poison(module):  # what a diverging step does: a weight becomes NaN, the next loss is NaN
        with torch.no_grad():
            next(module.encoder.parameters())[0, 0] = float("nan")

    with_callback(monkeypatch, At(12, poison))
    message = (
        r"the training loss became nan at step 12 \(epoch 0\); the run stopped at step 14 .*"
        r"The last checkpoint, .*last.ckpt \(after optimizer step 10\), is from before it and was kept; "
        r"no encoder or results were written. Likely remedies: a lower learning rate \(optimizer.lr, now 0.001\); "
        r"gradient clipping by norm \(trainer.gradient_clip_val=1.0 trainer.gradient_clip_algorithm=norm"
    )
    with pytest.raises(NonFiniteLossError, match=message):
        pretrain_main.run(make_config("pretrain", RUN), tmp_path)
    state = checkpoint(tmp_path)
    assert state["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (tmp_path / "encoder.safetensors").exists() and not (tmp_path / "results.json").exists()


def test_a_diverging_learning_rate_is_stopped_and_no_checkpoint_is_claimed(tmp_path):
    # The loss is nan at step 1; the first checkpoint, at step 2, is refused: none exists, and the message says so.
    cfg = make_config("pretrain", [*RUN, "optimizer=sgd", "optimizer.lr=1e6", "faults.checkpoint_every_n_steps=2"])
    with pytest.raises(
        NonFiniteLossError, match=r"became (nan|inf).*No checkpoint had been written yet.*optimizer.lr, now 1000000.0"
    ):
        pretrain_main.run(cfg, tmp_path)
    assert not (tmp_path / "encoder.safetensors").exists()
    assert not (tmp_path / "checkpoints").exists()


# One SGD step at lr 1e30 on the whole set: finite weights near 1e28, whose outputs are nan.
DIVERGED = [*QUIET, "optimizer=sgd", "optimizer.lr=1e30", "data.batch_size=4096"]


def test_weights_whose_validation_loss_is_nan_are_not_exported(tmp_path):
    with pytest.raises(
        NonFiniteLossError,
        match=r"^the validation loss became val/loss = nan after optimizer step 1 \(epoch 0\); the run stopped there. "
        r"No checkpoint had been written yet; no encoder",
    ):
        pretrain_main.run(make_config("pretrain", [*DIVERGED, "trainer.max_epochs=1"]), tmp_path)
    assert not (tmp_path / "encoder.safetensors").exists() and not (tmp_path / "results.json").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_of_the_weights_that_diverged_is_never_called_good(tmp_path):
    cfg = make_config("pretrain", [*DIVERGED, "trainer.max_epochs=2", "faults.checkpoint_every_n_steps=1"])
    bad = r"The last checkpoint, .*last.ckpt \(after optimizer step 1\), holds the weights that gave it: resuming it"
    with pytest.raises(NonFiniteLossError, match=r"^the validation loss became val/loss = nan .*" + bad):
        pretrain_main.run(cfg, tmp_path)
    assert checkpoint(tmp_path)["global_step"] == 1  # written before its weights were validated
    assert not (tmp_path / "encoder.safetensors").exists()
    # Resumed, it stops at once, and the message says why.
    resumed = make_config("pretrain", [*DIVERGED, "trainer.max_epochs=2", "faults.checkpoint_every_n_steps=1"])
    with open_dict(resumed):
        resumed.resume = str(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"^the training loss became (nan|inf) at step 1 .*" + bad):
        pretrain_main.run(resumed, tmp_path)


def test_a_nan_weight_refuses_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    def poison(module):  # a batch-norm statistic: the training loss (batch statistics) stays finite
        norm = next(m for m in module.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d))
        norm.running_var[0] = float("inf")

    with_callback(monkeypatch, At(12, poison))
    with pytest.raises(
        NonFiniteLossError,
        match=r"^the weights became NaN or infinite \(encoder\..*running_var\) after optimizer step 15 \(epoch 0\).*"
        r"The last checkpoint, .*last.ckpt \(after optimizer step 10\), is from before it and was kept",
    ):
        pretrain_main.run(make_config("pretrain", [*RUN, "backbone.batch_norm=true"]), tmp_path)
    state = checkpoint(tmp_path)
    assert state["global_step"] == 10 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


class _PerImageLoss(L.LightningModule):
    """Manual optimization, returning a loss per image (not a scalar); one image's is inf at ``bad_step``."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        losses = self.layer(batch).squeeze(1) ** 2
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(losses.mean())
        optimizer.step()
        if batch_idx == self.bad_step:
            losses = losses.detach().clone()
            losses[1] = float("inf")
        return losses

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_guard_finds_a_bad_value_anywhere_in_a_non_scalar_loss_and_nothing_else(tmp_path):
    guard = FiniteLossGuard(every_n_steps=3)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[guard]
    )
    data = torch.utils.data.DataLoader(torch.randn(40, 2), batch_size=4)
    with pytest.raises(
        NonFiniteLossError,
        match=r"became inf at step 4 \(epoch 0\); the run stopped at step 5 .*No checkpoint had been written yet; no",
    ):
        trainer.fit(_PerImageLoss(bad_step=4), data)
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[guard]).fit(
        _PerImageLoss(bad_step=-1), data
    )  # 20 finite steps: no error, and nothing kept after the last check
    assert guard._losses == [] and guard._seen == []


class _Loaded(_PerImageLoss):
    """Starts from weights with a NaN, as a damaged encoder file would give."""

    def __init__(self) -> None:
        super().__init__(bad_step=-1)
        with torch.no_grad():
            self.layer.weight[0, 0] = float("nan")


def test_the_guard_blames_loaded_weights_and_claims_no_checkpoint(tmp_path):
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[FiniteLossGuard(every_n_steps=3), LastCheckpoint(tmp_path, every_n_train_steps=1)],
    )
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(_Loaded(), torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=4))
    assert str(err.value) == (
        "the weights the run started with hold NaN or infinite values (layer.weight); the run stopped before its "
        "first step. No checkpoint had been written yet; no encoder or results were written. These weights were "
        "loaded, not trained (from the encoder file or the checkpoint the run started from): no setting of this run "
        "can help; use a file with finite weights."
    )
    assert list(tmp_path.iterdir()) == []


def test_the_trainer_writes_checkpoints_atomically_and_loads_no_code(tmp_path, monkeypatch):
    trainer = build_trainer(make_config("pretrain", QUIET).trainer, tmp_path)
    io = trainer.strategy.checkpoint_io.checkpoint_io  # inside AsyncCheckpointIO's background writer
    assert isinstance(io, AtomicCheckpointIO)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def killed_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(OSError, match="killed"):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Touch(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(evil)  # what resume=RUN does with RUN/checkpoints/last.ckpt
    assert not marker.exists()


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_loader_resumes_mid_epoch():
    x = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)

    def loader():
        sampler = EpochPermutation(20, shuffle=True, seed=3)
        sampler.set_epoch(2)
        return TensorBatches(x, torch.arange(20), 4, sampler)

    full = [b[1] for b in loader()]
    first = loader()
    it = iter(first)
    next(it), next(it)
    assert first.state_dict() == {"epoch": 2, "batches": 2}
    second = loader()
    second.load_state_dict(first.state_dict())
    rest = [b[1] for b in second]
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, full[2:], strict=True))
    assert len([b for b in second]) == 5  # the skip applies to one iteration only
    other_epoch = loader()
    other_epoch.load_state_dict({"epoch": 1, "batches": 2})
    assert len(list(other_epoch)) == 5  # a state from another epoch skips nothing


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    torch.save(collect(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


def test_resume_names_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match=r"resume=.*nope does not exist. Point resume at the folder"):
        checkpoint_to_resume(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ConfigError, match=r"checkpoints/last.ckpt does not exist.*killed before its first"):
        checkpoint_to_resume(str(tmp_path), tmp_path)
    assert checkpoint_to_resume("auto", tmp_path) is None  # a requeued job that had not saved yet: fresh start
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint_to_resume("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no .hydra/config.yaml"):
        resumed_config(
            make_config("pretrain", [f"resume={tmp_path}"]), tmp_path / "h", [f"resume={tmp_path}"], "pretrain"
        )
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    OmegaConf.save(make_config("pretrain", ["seed=3"]), tmp_path / ".hydra" / "config.yaml")
    cfg = make_config("pretrain", [f"resume={tmp_path}", "optimizer.lr=0.5"])
    with pytest.raises(ConfigError, match=r"the other overrides \['optimizer.lr=0.5'\] would change it"):
        resumed_config(cfg, tmp_path / "h", [f"resume={tmp_path}", "optimizer.lr=0.5"], "pretrain")
    cfg, run_dir = resumed_config(cfg, tmp_path / "h", [f"resume={tmp_path}", "hydra.verbose=true"], "pretrain")
    assert run_dir == tmp_path and cfg.seed == 3 and cfg.resume == str(tmp_path)
    assert cfg.optimizer.lr == 0.001  # composed from conf/ and the recorded overrides, not the command line


def test_finetuning_resumed_after_the_unfreeze_matches(tmp_path, monkeypatch):
    """Mid-epoch resume skips that epoch's start: the freeze schedule must still be the epoch's."""
    import finetune.__main__ as finetune_main
    from pretrain.encoder_file.format import save_encoder
    from pretrain.encoders import build_encoder

    torch.manual_seed(0)
    encoder = tmp_path / "e.safetensors"
    save_encoder(
        encoder,
        build_encoder("mlp", (1, 8, 8), widths=[32, 16]),
        mean=[0.3],
        std=[0.3],
        pretext={"task": "t"},
        data={"name": "d"},
    )
    runs = [
        f"encoder={encoder}",
        "trainer.max_epochs=4",
        "schedule.unfreeze_epoch=2",
        "faults.checkpoint_every_n_steps=3",
    ]
    runs += ["data.hflip=true", "head.dropout=0.2", *QUIET]  # 4 steps per epoch; unfrozen from step 8 on
    reference = finetune_main.run(make_config("finetune", runs), tmp_path / "ref")

    def crash(_):
        raise Crash

    build = finetune_main.build_trainer
    monkeypatch.setattr(
        finetune_main,
        "build_trainer",
        lambda c, d, cb=(), faults=None: build(c, d, [*cb, At(10, crash)], faults=faults),
    )
    with pytest.raises(Crash):
        finetune_main.run(make_config("finetune", runs), tmp_path / "run")
    assert checkpoint(tmp_path / "run")["global_step"] == 9  # epoch 2, after the unfreeze
    monkeypatch.undo()
    resumed = finetune_main.run(make_config("finetune", [*runs, f"resume={tmp_path / 'run'}"]), tmp_path / "run")
    assert same(checkpoint(tmp_path / "run")["state_dict"], checkpoint(tmp_path / "ref")["state_dict"])
    assert resumed["test_acc"] == reference["test_acc"]


def test_last_checkpoint_files_its_state_under_model_checkpoints_key(tmp_path):
    # A resumed run finds each callback's state in the checkpoint by this key: the one made once
    # must be the string ModelCheckpoint builds, or checkpoints written before would not resume.
    kept = LastCheckpoint(tmp_path, every_n_train_steps=5)
    assert kept.state_key == ModelCheckpoint.state_key.fget(kept)
    assert kept.state_key.startswith("LastCheckpoint{") and "'every_n_train_steps': 5" in kept.state_key


def _lightning_checkpoint(model: torch.nn.Module, **changes) -> dict:
    return {"state_dict": model.state_dict(), "optimizer_states": [], "loops": {}, "global_step": 5, **changes}


def test_resume_refuses_a_checkpoint_the_model_cannot_continue_from(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_checkpoint(model), path)
    check_resumable(str(path), model)  # its own: accepted
    whole = path.read_bytes()

    path.write_bytes(whole[: len(whole) // 2])  # cut short: a full disk, an interrupted copy
    with pytest.raises(ConfigError, match=r"last.ckpt cannot be read as a checkpoint \(not a whole zip archive"):
        check_resumable(str(path), model)
    torch.save({"weights": model.state_dict()}, path)
    with pytest.raises(ConfigError, match=r"is not a checkpoint of a training run \(it lacks state_dict, optim"):
        check_resumable(str(path), model)
    other_task = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    torch.save(_lightning_checkpoint(other_task), path)
    with pytest.raises(
        ConfigError,
        match=r"holds another model than the one the run's config builds \(missing: 1.running_mean, 1.running_var, "
        r"1.num_batches_tracked; of other shapes: 1.weight \(2, 3\) there, \(3,\) here, 1.bias \(2,\) there, "
        r"\(3,\) here\): it is another run's checkpoint, or the run's .hydra/config.yaml was edited since",
    ):
        check_resumable(str(path), model)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    torch.save(_lightning_checkpoint(wider), path)
    with pytest.raises(ConfigError, match=r"\(not in the model: 3.weight, 3.bias; of other shapes: 0.weight \(5, 4\) "):
        check_resumable(str(path), model)
    state = _lightning_checkpoint(model)
    state["state_dict"]["1.running_var"][1] = float("nan")
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"holds NaN or infinite weights \(1.running_var\): no run can continue"):
        check_resumable(str(path), model)


def test_a_refused_resume_writes_nothing_to_the_run_folder(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save(_lightning_checkpoint(torch.nn.Linear(2, 2)), tmp_path / "checkpoints" / "last.ckpt")  # another model
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"than the one the run's config builds \(missing: encoder"):
        pretrain_main.run(make_config("pretrain", [*QUIET, f"resume={tmp_path}"]), tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_refused_resume_is_one_line_exit_2_and_leaves_the_run_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(make_config("pretrain", QUIET)))
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in QUIET))
    (run_dir / "pretrain.log").write_text("[the first run's log]\n")
    (run_dir / "checkpoints").mkdir()
    torch.save(_lightning_checkpoint(torch.nn.Linear(2, 2)), run_dir / "checkpoints" / "last.ckpt")
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(last[:-100])  # cut short
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = resume_command(run_dir, tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.startswith(f"error: resume: {run_dir / 'checkpoints' / 'last.ckpt'} cannot be read as a")
    assert len(refused.stderr.splitlines()) == 1
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before
    new = {str(p.relative_to(run_dir)) for p in after.keys() - before.keys()}
    assert {p for p in new if not p.startswith(".hydra/resume/")} <= {".lock"}  # Hydra's record of the command


def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_file(tmp_path, monkeypatch):
    with_callback(monkeypatch, At(7, lambda _: monkeypatch.setattr(torch, "save", full_disk)))
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(NoSpaceError) as err:
        pretrain_main.run(make_config("pretrain", RUN), tmp_path)
    assert err.value.errno == errno.ENOSPC
    assert re.fullmatch(rf"no space left on device writing {last} \(about \d+ .B needed, \d+ .B free\)", str(err.value))
    monkeypatch.undo()
    assert checkpoint(tmp_path)["global_step"] == 5  # the write at step 10 failed; the one before is whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert not (tmp_path / "encoder.safetensors").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_its_own_exit_status(tmp_path):
    run_dir = tmp_path / "run"
    full = interrupted(tmp_path, 27, "ENOSPC", run_dir)
    assert full.returncode == 74, full.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert full.stderr.strip().splitlines()[-1] == (
        f"error: no space left on device writing {last} (about "
        + full.stderr.split("(about ")[1].split(")")[0]
        + f"): {last} from before is intact; free space there and continue with: python -m pretrain resume={run_dir}"
    )
    assert "Traceback" not in full.stderr and "Logging error" not in full.stderr
    assert checkpoint(run_dir)["global_step"] == 25
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".last.ckpt.{dead}.tmp", f".last.ckpt.{live.pid}.tmp", ".notes.tmp", "last.ckpt", "7.tmp"]
        for name in names:
            (tmp_path / name).write_bytes(b"half")
        trainer = L.Trainer(
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            callbacks=[LastCheckpoint(tmp_path, every_n_train_steps=1)],
        )
        trainer.fit(_PerImageLoss(bad_step=-1), torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=4))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n in names if str(dead) not in n)
        assert remove_stale_temporaries(tmp_path / "absent") == []
    finally:
        live.kill()
        live.wait()
