"""Sweeps against a real SLURM: a single-node cluster on this machine (scripts/slurm_local.sh),
without accounting (no sacct), as on many clusters. CPU partition, one CPU per job.

A time limit is simulated as SLURM does it ``signal_delay_s`` before the limit: SIGUSR2 to the
job (``scancel --signal=USR2``), once the run has a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from subprocess import PIPE
from types import SimpleNamespace

import pytest
import torch
from helpers import QUIET, REPO, make_config, sweep_run_dir
from lightning.fabric.plugins.environments import SLURMEnvironment
from safetensors.torch import load_file
from test_sweeps import hydra_command, subprocess_env

import pretrain.__main__ as pretrain_main
from hydra_plugins.pretext_sweeper.slurm_launcher import SlurmLauncher, job_states
from hydra_plugins.pretext_sweeper.tolerant_sweeper import describe_failure
from pretrain.run.faults import FaultTolerance
from pretrain.run.resume import checkpoint_to_resume, finished_before_restart

LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",  # a CPU partition: nothing else about tasks is set
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running single-node SLURM; where none can be started, the test is skipped, except in CI."""
    started = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm_local.sh")], capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        reason = f"no local SLURM: {started.stderr.strip()}"
        if os.environ.get("CI") == "true" or os.environ.get("PRETEXT_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (CI must run the SLURM tests)")
        pytest.skip(reason)


def sweep_command(app: str, sweep: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", app, "-m", *LAUNCHER, *overrides, f"hydra.sweep.dir={sweep}", *QUIET]


def run_dir(sweep: Path, *overrides: str) -> Path:
    """A run's folder in ``sweep``, named by its overrides in ``sweep_command``'s order (QUIET last)."""
    return sweep_run_dir(sweep, [*overrides, *QUIET])


def job_env() -> dict[str, str]:
    return {**subprocess_env(), "OMP_NUM_THREADS": "1"}  # one CPU per job


def array_id(sweep: Path) -> str:
    [script] = sweep.glob(".submitit/*/*_submission.sh")  # one submission: one job array
    return script.parent.name


def sbatch_flags(sweep: Path) -> set[str]:
    [script] = sweep.glob(".submitit/*/*_submission.sh")
    return {line for line in script.read_text().splitlines() if line.startswith("#SBATCH")}


def slurm_jobs(job_id: str) -> dict[str, dict[str, str]]:
    """SLURM's record of a job, or of each job of an array by task id (kept MinJobAge after the end)."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, check=True
    )
    records = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in shown.stdout.splitlines()]
    return {r.get("ArrayTaskId", ""): r for r in records}


def span(record: dict[str, str]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(record["StartTime"]), datetime.fromisoformat(record["EndTime"])


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


def sweep_and_scancel(command: list[str], sweep: Path, ready: Path, *scancel: str) -> subprocess.CompletedProcess:
    """Runs a sweep; once ``ready`` exists, ``scancel SCANCEL`` (``{job}``: the sweep's job id). Its exit
    status is not checked: it is 1 after killing a job step ("Kill job error ... No error")."""
    with subprocess.Popen(command, cwd=sweep.parent, env=job_env(), stdout=PIPE, stderr=PIPE, text=True) as process:
        try:
            wait_for(ready)
            job = array_id(sweep)
            subprocess.run(["scancel", *(arg.format(job=job) for arg in scancel)])
            out, err = process.communicate(timeout=300)
        finally:
            if process.poll() is None:  # the test failed: stop the sweep and its jobs
                process.kill()
                for script in sweep.glob(".submitit/*/*_submission.sh"):
                    subprocess.run(["scancel", script.parent.name])
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.slow
def test_a_cpu_sweep_is_one_job_array_whose_runs_run_at_once_and_once(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    command = sweep_command("finetune", sweep, "seed=0,1", "trainer.max_epochs=2")
    done = subprocess.run(command, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    array, console = array_id(sweep), done.stdout + done.stderr
    assert {
        "#SBATCH --partition=debug",
        "#SBATCH --gpus-per-node=0",
        "#SBATCH --ntasks-per-node=1",  # no GPUs: one task
        "#SBATCH --array=0-1%2",
    } <= sbatch_flags(sweep)
    jobs = slurm_jobs(array)
    for n in (0, 1):
        results = run_dir(sweep, f"seed={n}", "trainer.max_epochs=2") / "results.json"
        assert json.loads(results.read_text())["seed"] == n
        assert f"#{n} SLURM job {array}_{n}: COMPLETED" in console
        log = (sweep / ".submitit" / f"{array}_{n}" / f"{array}_{n}_0_log.out").read_text()
        assert log.count("Starting with JobEnvironment") == 1 and jobs[str(n)]["Restarts"] == "0"  # ran once
    # Job states without sacct: no warning at each poll, one line that says where states come from.
    assert "sacct does not answer here" in console and "Bypassing sacct error" not in console
    assert console.count("accounting storage is disabled") == 1
    (start0, end0), (start1, end1) = span(jobs["0"]), span(jobs["1"])
    assert start0 < end1 and start1 < end0  # both at once: one CPU each, 2 here


@pytest.mark.slow
def test_failed_and_killed_runs_are_listed_with_their_jobs_and_one_job_runs_at_a_time(slurm, tmp_path):
    """#0 fails (a config error), #1 is killed by SIGKILL (as by the kernel for its memory), #2 writes its results."""
    sweep = tmp_path / "sweep"
    command = sweep_command("finetune", sweep, "data.label_budget=0,50,100", "trainer.max_epochs=2")
    command.append("hydra.launcher.array_parallelism=1")
    killed = run_dir(sweep, "data.label_budget=50", "trainer.max_epochs=2")
    done = sweep_and_scancel(command, sweep, killed / ".hydra" / "config.yaml", "--signal=KILL", "{job}_1.0")
    assert done.returncode == 1, done.stderr[-3000:]
    err = done.stderr
    array = array_id(sweep)
    assert "#SBATCH --array=0-2%1" in sbatch_flags(sweep)
    logs = [sweep / ".submitit" / f"{array}_{n}" / f"{array}_{n}_0_log.out" for n in range(3)]
    failures = err[err.index("2 of 3 runs failed") :]
    assert "#0 data.label_budget=0 " in failures and "#1 data.label_budget=50 " in failures and "#2" not in failures
    failed = run_dir(sweep, "data.label_budget=0", "trainer.max_epochs=2")
    assert f"({failed}; SLURM job {array}_0, log {logs[0]}): ConfigError: invalid configuration" in failures
    assert "data.label_budget=0 must be at least 1" in logs[0].read_text()
    assert f"({killed}; SLURM job {array}_1, log {logs[1]}): SlurmJobError: the job ended without a result" in failures
    assert list(sweep.glob("*/results.json")) == [
        run_dir(sweep, "data.label_budget=100", "trainer.max_epochs=2") / "results.json"
    ]
    jobs = slurm_jobs(array)
    spans = [span(jobs[str(n)]) for n in range(3)]
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0]  # array_parallelism=1: one after the other
    assert f"#2 SLURM job {array}_2: COMPLETED" in done.stdout + err


PRETRAIN = [
    "seed=0",
    "data.batch_size=2",  # ~1800 steps: several seconds of training after the first checkpoint
    "trainer.max_epochs=3",
    "faults.checkpoint_every_n_steps=100",
    "data.hflip=true",  # augmentation draws random numbers every step: a resumed run must restore them
]


@pytest.mark.slow
def test_a_run_signalled_before_its_time_limit_is_requeued_and_ends_as_if_never_stopped(slurm, tmp_path):
    reference = tmp_path / "reference"
    pretrain_main.run(make_config("pretrain", [*PRETRAIN, *QUIET]), reference)

    sweep = tmp_path / "sweep"
    limits = ["hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=1"]
    command = sweep_command("pretrain", sweep, *PRETRAIN, *limits)
    # What SLURM sends signal_delay_s before the time limit, once the run has a checkpoint; no resume=auto given.
    run = run_dir(sweep, *PRETRAIN)
    done = sweep_and_scancel(command, sweep, run / "checkpoints" / "last.ckpt", "--signal=USR2", "{job}")
    assert done.returncode == 0, done.stderr[-3000:]
    job = array_id(sweep)
    log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    first, second = log.split("Starting with JobEnvironment")[1:]  # two starts of the same job
    assert "this job is timed-out" in first and "Requeued job" in first and "encoder written" not in first
    assert "SLURM restarted this job (1x): continuing from" in second and "Restored all states" in second
    assert "SLURM auto-requeueing enabled" not in log  # submitit's requeue only
    assert slurm_jobs(job)[""]["Restarts"] == "1"
    assert f"#0 SLURM job {job}: COMPLETED" in done.stdout + done.stderr
    requeued, uninterrupted = (
        load_file(run / "encoder.safetensors"),
        load_file(reference / "encoder.safetensors"),
    )
    assert requeued.keys() == uninterrupted.keys()
    assert all(torch.equal(requeued[k], uninterrupted[k]) for k in requeued)


def test_job_states_from_squeue_count_a_job_gone_from_the_queue_as_ended():
    states = job_states(delay_s=30)
    states.source = "squeue"  # as on a cluster without accounting
    for job_id in ("7_0", "7_1", "7_2"):
        states.register_job(job_id)
    assert states.read_info("7_0|RUNNING|vm\n7_1|PENDING|\n") == {
        "7_0": {"JobID": "7_0", "State": "RUNNING", "NodeList": "vm"},
        "7_1": {"JobID": "7_1", "State": "PENDING", "NodeList": ""},
    }
    later = states.read_info("7_1|REQUEUED|\n7_2|RUNNING|vm\n")  # 7_0 ended and was forgotten
    assert {k: v["State"] for k, v in later.items()} == {"7_0": "ENDED", "7_1": "REQUEUED", "7_2": "RUNNING"}


def test_a_job_that_failed_outside_its_run_is_a_failed_run_with_submitit_s_reason():
    from submitit.core.utils import FailedJobError

    trace = (
        "Traceback ...\nsubmitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times."
    )
    error = FailedJobError(  # as submitit words it
        f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - a"
    )

    class Job:  # a job of submitit's whose result is that error
        job_id, state, paths = "5_1", "FAILED", SimpleNamespace(stdout=Path("/sweep/.submitit/5_1/5_1_0_log.out"))

        def task(self, k: int) -> Job:
            return self

        def result(self) -> None:
            raise error

    launcher = SlurmLauncher()
    launcher.job_config = lambda overrides, num: None  # no Hydra context here
    failed = launcher.job_return(Job(), ["seed=1"], 1)
    assert failed.status.name == "FAILED"
    assert describe_failure(1, failed) == (
        "#1 seed=1 (?; SLURM job 5_1, log /sweep/.submitit/5_1/5_1_0_log.out): SlurmJobError: "
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times."
    )


def test_a_restarted_slurm_job_continues_its_run_unless_the_run_had_ended(tmp_path, monkeypatch, capsys):
    last, results = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "results.json"
    last.parent.mkdir()
    last.write_bytes(b"checkpoint")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert checkpoint_to_resume(None, tmp_path) is None  # a first start: a new run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert checkpoint_to_resume(None, tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert checkpoint_to_resume(None, tmp_path) == str(last)
    assert f"SLURM restarted this job (2x): continuing from {last}" in capsys.readouterr().err
    assert checkpoint_to_resume(None, tmp_path / "elsewhere") is None  # nothing to continue: afresh
    assert not finished_before_restart(None, tmp_path)
    results.write_text("{}")
    os.utime(last, ns=(1, 1))
    assert finished_before_restart(None, tmp_path) and finished_before_restart("auto", tmp_path)
    assert not finished_before_restart(str(tmp_path), tmp_path)  # resume=RUN: the user's command
    os.utime(results, ns=(0, 0))  # a results.json older than the checkpoint: the run went on since
    assert not finished_before_restart(None, tmp_path)


@pytest.mark.slow
def test_a_restarted_job_whose_run_had_ended_leaves_it_as_it_is(tmp_path, monkeypatch, capsys):
    import finetune.__main__ as finetune_main

    run_dir = tmp_path / "run"
    argv = ["trainer.max_epochs=1", f"hydra.run.dir={run_dir}", *QUIET]
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 0
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert hydra_command(finetune_main.main, argv, monkeypatch) == 0
    assert "SLURM restarted this job after its run had ended" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    touched = (run_dir / "finetune.log", run_dir / ".lock")  # Hydra's log of the command; who holds the folder
    assert {p: t for p, t in after.items() if p not in touched} == {p: t for p, t in files.items() if p not in touched}


def test_lightning_does_not_requeue_slurm_jobs_itself(monkeypatch):
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "pretrain", "SLURM_JOB_ID": "5"}.items():
        monkeypatch.setenv(key, value)
    [environment] = [p for p in FaultTolerance().plugins() if isinstance(p, SLURMEnvironment)]
    assert not environment.auto_requeue
    assert FaultTolerance(lightning_slurm_requeue=True).plugins()[-1].auto_requeue
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(key)
    assert not any(isinstance(p, SLURMEnvironment) for p in FaultTolerance().plugins())
