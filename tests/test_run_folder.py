"""One run per folder: a second process in a live run's folder (the same hydra.run.dir, or
resume=RUN while RUN runs) is refused with exit 2, a message naming the process that holds it,
and nothing touched; a new run does not start over another run's record."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import QUIET, REPO, hydra_command

import pretrain.__main__ as pretrain_main
from pretrain.run.run_folder import LOCK, RunFolderError, hold, release

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HOLDER = (
    "import sys; from pathlib import Path; from pretrain.run.run_folder import hold; "
    "hold(Path(sys.argv[1]), new_run=True); print('held', flush=True); sys.stdin.read()"
)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def held(tmp_path):
    """A run folder that another process holds, and that process."""
    folder = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, text=True
    )
    assert process.stdout.readline() == "held\n"
    yield folder, process
    process.stdin.close()
    process.wait()


def test_a_folder_another_process_holds_is_refused_naming_it_and_untouched(held, monkeypatch):
    folder, process = held
    before = snapshot(folder)
    message = "^" + re.escape(f"{folder} is in use by another run: process {process.pid} on {socket.gethostname()}: ")
    for new_run in (True, False):  # a new run there, or a resume of it
        with pytest.raises(RunFolderError, match=message):
            hold(folder, new_run=new_run)
    assert snapshot(folder) == before
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank > 0 works under rank 0's lock: it takes none
    hold(folder, new_run=False)

    monkeypatch.delenv("LOCAL_RANK")
    process.stdin.close()  # the holder ends: the system drops its lock
    process.wait()
    hold(folder, new_run=False)
    assert f"process {os.getpid()} on " in (folder / LOCK).read_text()
    release(folder)


def test_a_new_run_does_not_start_over_another_runs_record(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "results.json").write_text("{}\n")
    before = snapshot(folder)
    with pytest.raises(RunFolderError, match="^" + re.escape(f"{folder} already holds a run (its .hydra): resume it")):
        hold(folder, new_run=True)
    assert snapshot(folder) == before and not (folder / LOCK).exists()

    monkeypatch.chdir(tmp_path)
    assert hydra_command(pretrain_main.main, [f"hydra.run.dir={folder}"], monkeypatch) == 2
    assert snapshot(folder) == before  # Hydra wrote nothing there either: refused before it does

    hold(folder, new_run=False)  # resuming it (resume=RUN, or a requeued job's resume=auto) may
    release(folder)


@pytest.mark.slow
def test_two_processes_in_one_folder(tmp_path):
    """The first run stops itself mid-training (SIGSTOP, lock held); a second run in its folder
    and a resume of it are refused naming it and change nothing; the first then ends normally."""
    run = tmp_path / "run"
    overrides = ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", *QUIET]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, REPO / "tests" / "fault_injection.py", "2", "SIGSTOP", *overrides, f"hydra.run.dir={run}"],
            cwd=tmp_path,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), (tmp_path / "first.log").read_text()[-3000:]
        before = snapshot(run)
        holder = f"error: {run} is in use by another run: process {first.pid} on {socket.gethostname()}: "
        for argv in ([*overrides, f"hydra.run.dir={run}"], [f"resume={run}"]):
            second = subprocess.run(
                [sys.executable, "-m", "pretrain", *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True
            )
            assert second.returncode == 2 and second.stderr.startswith(holder), second.stderr[-3000:]
            assert snapshot(run) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == overrides
    assert (run / "encoder.safetensors").is_file() and not (run / ".hydra" / "resume").exists()
