"""Sweeps: multirun past failures, the submitit launcher path, DDP in a multirun, logging."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUIET, REPO, hydra_command, make_config, sweep_run_dir
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

import finetune.__main__ as finetune_main
from finetune.report.command import make_report
from hydra_plugins.pretext_sweeper.tolerant_sweeper import config_groups, runs_to_compose
from pretrain.encoder_file.format import save_encoder
from pretrain.encoders import build_encoder
from pretrain.run.callbacks.channels_last import ChannelsLast
from pretrain.run.hydra_ddp import job_argv
from pretrain.run.trainer import build_trainer, resolve_precision, skip_gpu_probe_without_gpus

T975_1 = 12.706204736174698  # Student's t, 97.5% quantile, 1 degree of freedom


def encoder_file(path: Path, **backbone) -> Path:
    """An encoder file for the 8x8 digits (random weights: these tests are about the plumbing)."""
    return save_encoder(
        path,
        build_encoder(input_shape=(1, 8, 8), **backbone),
        mean=[0.3],
        std=[0.4],
        pretext={"task": "autoencoder", "config": {}},
        data={"name": "digits", "classes": [str(i) for i in range(10)], "num_train": 1347},
    )


def test_multirun_survives_a_failed_run_and_the_report_matches_its_results(tmp_path, monkeypatch, capsys):
    backbone = OmegaConf.to_container(make_config("finetune").backbone)  # the scratch runs' architecture
    encoder = encoder_file(tmp_path / "enc.safetensors", **backbone)
    missing = tmp_path / "missing.safetensors"
    sweep = tmp_path / "sweep"
    same = ["trainer.max_epochs=2", "schedule.unfreeze_epoch=1", "trainer.log_every_n_steps=2"]
    same += ["data.min_batches_per_epoch=null", *QUIET]  # an epoch: one pass, 4 steps
    status = hydra_command(
        finetune_main.main,
        ["-m", f"encoder={missing},{encoder},none", "seed=0,1", *same, f"hydra.sweep.dir={sweep}"],
        monkeypatch,
    )

    def folder(encoder, seed):  # a run's folder, named by its overrides
        return sweep_run_dir(sweep, [f"encoder={encoder}", f"seed={seed}", *same])

    # The two runs with the missing encoder came first; the four after them still ran.
    assert status == 1
    err = capsys.readouterr().err
    assert "2 of 6 runs failed" in err and f"#0 encoder={missing} seed=0" in err and "#1 " in err
    assert "EncoderFileError" in err and "#2" not in err
    assert "Traceback" in (folder(missing, 1) / "finetune.log").read_text()  # the failed run's own log has it
    files = sorted(sweep.glob("*/results.json"))
    assert sorted(f.parent for f in files) == sorted(folder(e, s) for e in (encoder, "none") for s in (0, 1))
    assert folder("none", 1).name.startswith("encoder-none+seed-1+trainer.max_epochs-2+schedule.unfreeze_epoch-1+")

    results = [json.loads(f.read_text()) for f in files]
    acc = {(r["encoder_file"] is not None, r["seed"]): r["test_acc"] for r in results}
    report = make_report([sweep], min_seeds=2)
    scratch, pretrained = report.configurations
    assert (scratch.label, pretrained.label) == ("scratch", "autoencoder")
    values = [acc[False, 0], acc[False, 1]]
    mean, std = sum(values) / 2, abs(values[0] - values[1]) / math.sqrt(2)
    assert (scratch.summary.mean, scratch.summary.std) == (pytest.approx(mean), pytest.approx(std))
    assert scratch.summary.ci_high == pytest.approx(mean + T975_1 * std / math.sqrt(2))
    diffs = [acc[True, s] - acc[False, s] for s in (0, 1)]
    assert pretrained.baseline is scratch and pretrained.diffs == pytest.approx(diffs)
    assert pretrained.diff.mean == pytest.approx(sum(diffs) / 2)
    assert len(report.problems) == 2
    for problem, seed in zip(report.problems, (0, 1), strict=True):
        run = folder(missing, seed)
        assert problem.startswith(f"{run / 'results.json'}: missing") and str(run / "finetune.log") in problem

    # Logging: the gradient norm every log_every_n_steps steps (4 steps an epoch here), and
    # TensorBoard on the sweep folder finds every run with its curves.
    log = (folder("none", 1) / "csv" / "metrics.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in log[1:]]
    assert [int(r["step"]) for r in rows if r["train/grad_norm"]] == [1, 3, 5, 7]
    assert all(float(r["train/grad_norm"]) > 0 for r in rows if r["train/grad_norm"])
    tensorboard = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    tensorboard.Reload()
    runs = tensorboard.Runs()
    assert sorted(runs) == sorted(f"{folder(e, s).name}/tensorboard" for e in (encoder, "none") for s in (0, 1))
    for run in runs:
        assert {"train/grad_norm", "train/loss_step", "test/acc", "lr-Adam/head", "lr-Adam/encoder"} <= set(
            runs[run]["scalars"]
        )


def test_the_legality_check_composes_one_run_of_each_kind():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        groups = config_groups(GlobalHydra.instance().config_loader())
    GlobalHydra.instance().clear()
    assert {"optimizer", "data", "experiment", "hydra/launcher", "hydra/sweeper"} <= groups
    assert "seed" not in groups and "schedule" not in groups
    batch = [
        ["seed=0", "optimizer=adam"],
        ["seed=1", "optimizer=adam"],  # a plain value: composes as the first
        ["seed=0", "optimizer=sgd"],  # another choice of a config group
        ["seed=0", "optimizer=adam", "data.classes=[a,b]"],  # a list where there was none
        ["seed=1", "optimizer=adam", "data.classes=[c,d]"],
        ["seed=0", "optimizer=adam", "schedule=5"],  # a scalar where the config has a dict
        ["seed=0", "optimizer=adam", "schedule={unfreeze_epoch:1}"],
        ["seed=0", "optimizer=adam", "~schedule"],
        ["seed=0", "hydra/launcher=slurm"],
    ]
    kept = runs_to_compose(batch, groups)
    assert kept == [batch[i] for i in (0, 2, 3, 5, 6, 7, 8)]


def test_a_seed_sweep_composes_one_run_before_launching_them_all(tmp_path, monkeypatch):
    composed = []
    check = Sweeper.validate_batch_is_legal  # what TolerantSweeper's check hands the runs it composes to

    def recorded(self, batch):
        composed.extend(batch)
        check(self, batch)

    monkeypatch.setattr(Sweeper, "validate_batch_is_legal", recorded)
    argv = ["-m", "seed=0,1,2", "optimizer.lr=0.01", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}", *QUIET]
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 0
    assert len(list(tmp_path.glob("*/results.json"))) == 3
    assert len(composed) == 1 and composed[0][0] == "seed=0"


def test_a_sweep_with_a_run_that_cannot_compose_starts_no_run(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    argv = ["-m", "seed=0,1", "optimizer=adam,nosuch", f"hydra.sweep.dir={sweep}", *QUIET]
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 2
    assert capsys.readouterr().err.startswith("error: optimizer=nosuch is not an option of optimizer; the options are")
    assert not [p for p in sweep.iterdir() if p.is_dir()]  # no run folder: nothing was launched


def test_slurm_launcher_turns_the_config_into_an_sbatch_job_array(tmp_path, monkeypatch):
    """No cluster here: a stand-in sbatch keeps the job script that submitit hands it, and refuses it."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for command, script in [
        ("srun", "exit 1"),
        ("sbatch", f'cp "$1" {tmp_path / "job.sh"}; echo no cluster >&2; exit 1'),
    ]:
        (stand_ins / command).write_text(f"#!/bin/sh\n{script}\n")
        (stand_ins / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_ins}{os.pathsep}{os.environ['PATH']}")
    argv = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"]
    argv += ["hydra.launcher.array_parallelism=2", "trainer=ddp", "seed=0,1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 1
    flags = {line for line in (tmp_path / "job.sh").read_text().splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",  # one process per GPU
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=60",
        "#SBATCH --array=0-2%2",  # the sweep's 3 runs, at most 2 at a time
        "#SBATCH --signal=USR2@120",
    } <= flags


def test_rank_processes_get_the_job_not_the_sweep():
    argv = ["x.py", "-m", "--config-name", "finetune", "-cd=/c", "seed=0,1", "encoder=a,b"]
    job = ["x.py", "--config-name", "finetune", "-cd=/c", "seed=1", "encoder=b"]
    assert job_argv(argv, ["seed=1", "encoder=b"]) == job


def test_gpu_and_ddp_trainers_use_mixed_precision_where_the_gpu_has_it(monkeypatch):
    gpu, ddp = make_config("pretrain", ["trainer=gpu"]).trainer, make_config("finetune", ["trainer=ddp"]).trainer
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "mixed")
    assert (ddp.strategy, ddp.devices, ddp.precision) == ("ddp", "auto", "mixed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for native_bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):
        # Older GPUs only emulate bfloat16 (slowly): that must count as no bfloat16.
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True, b=native_bf16: b or including_emulation
        )
        assert resolve_precision("mixed", "gpu") == expected
    assert resolve_precision("mixed", "cpu") == "32-true" and resolve_precision("16-mixed", "gpu") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("mixed", "auto") == "32-true"


def test_gpu_checks_use_the_cuda_runtime_only_where_there_is_no_gpu(monkeypatch):
    """Lightning's NVML-based check loads NVML at every call (every Adam step) without a GPU;
    with GPUs it stays, so that checking does not initialize CUDA before a fork."""
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    skip_gpu_probe_without_gpus()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    skip_gpu_probe_without_gpus()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"


@pytest.mark.parametrize(
    "overrides,expected", [([], False), (["trainer=gpu"], True), (["trainer.channels_last=true"], True)]
)
def test_channels_last_is_a_trainer_option_that_gpus_turn_on(tmp_path, overrides, expected):
    cfg = make_config("pretrain", overrides)
    assert cfg.trainer.channels_last is expected
    cfg.trainer.accelerator = "cpu"  # built here without a GPU
    trainer = build_trainer(cfg.trainer, tmp_path)
    assert any(isinstance(c, ChannelsLast) for c in trainer.callbacks) is expected
    assert "channels_last" in cfg.trainer  # the run's config keeps it: read, not removed


def subprocess_env() -> dict[str, str]:
    """This checkout first on the path of every process a test starts (and of their children)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_end_to_end(tmp_path):
    """As the basic launcher: each run's results printed; submitit's files only in the sweep, no `%j` folder."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "finetune", "-m", "hydra/launcher=submitit_local", "seed=0,1"]
    command += ["trainer.max_epochs=2", f"hydra.sweep.dir={sweep}", *QUIET]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stderr + done.stdout
    logs = [p for p in (sweep / ".submitit").iterdir() if p.name.endswith("_log.out")]
    assert len(logs) == 2  # each run was a submitit job, with its own logs
    results = [line for line in done.stdout.splitlines() if line.startswith("test accuracy")]
    shown = {line.rsplit("results in ", 1)[1] for line in results}
    assert shown == {str(p) for p in sweep.glob("*/results.json")} and len(shown) == 2
    assert "submitit INFO" not in done.stdout  # submitit's own log lines are not the runs' output
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]
    assert not [p for p in tmp_path.rglob("*") if "%j" in p.name]
    report = make_report([sweep], min_seeds=2)
    [scratch] = report.configurations
    assert sorted(scratch.by_seed) == [0, 1] and not report.problems


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_in_a_multirun(tmp_path):
    """Frozen blocks stay bit-identical on both ranks while frozen; one run folder and one
    results file per job; nothing written outside the sweep."""
    encoder = encoder_file(tmp_path / "enc.safetensors", arch="cnn", channels=[8, 16])  # batch norm: buffers too
    command = [sys.executable, str(REPO / "tests" / "ddp_probe.py"), "-m", f"encoder={encoder}", "seed=0,1"]
    command += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=3"]
    command += ["schedule.unfreeze_epoch=2", *QUIET]
    done = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    [sweep] = (tmp_path / "multirun" / "finetune").glob("*/*")  # the rank-1 processes started no sweep of their own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.safetensors", "multirun"]
    runs = [sweep_run_dir(sweep, [o.replace("seed=0,1", f"seed={s}") for o in command[3:]]) for s in (0, 1)]
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == sorted(runs)
    assert sorted(tmp_path.rglob("results.json")) == sorted(run / "results.json" for run in runs)
    for seed, run in enumerate(runs):
        assert json.loads((run / "results.json").read_text())["seed"] == seed
        probes = [json.loads((run / f"probe-rank{rank}.json").read_text()) for rank in (0, 1)]
        assert [(p["rank"], p["world_size"]) for p in probes] == [(0, 2), (1, 2)]
        for p in probes:
            start, (first, second, unfrozen) = p["start"], p["epochs"]
            assert start["frozen"] == first["frozen"] == second["frozen"] == 2 and unfrozen["frozen"] == 0
            assert first["blocks"] == second["blocks"] == start["blocks"]  # bit-identical, batch-norm stats too
            assert first["head"] != start["head"]  # while the head trains
            assert all(unfrozen["blocks"][b] != start["blocks"][b] for b in start["blocks"])
        # The ranks hold the same weights throughout (batch-norm statistics are per rank once unfrozen).
        params = [
            [{b: v["params"] for b, v in e["blocks"].items()} | {"head": e["head"]} for e in p["epochs"]]
            for p in probes
        ]
        assert params[0] == params[1]
