"""The benchmark runs end to end (tiny sizes, every section): it cannot rot unnoticed. It times nothing here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_benchmark_runs_every_section_and_prints_its_table(real_data, tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench",
            "--tiny",
            "--repeats",
            "1",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "PRETEXT_DATA": str(real_data)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {f["section"] for f in figures} == {"1", "2", "3", "4", "5"}
    for f in figures:
        assert all(v == v for v in f["measured"]), f  # no NaN
        assert f["name"] in done.stdout
    assert "| # | figure | measured | baseline | ratio | target | met |" in done.stdout


def test_a_child_commands_peak_memory_is_its_own_not_this_process():
    from scripts.bench_common import run_child

    ballast = bytearray(300 * 2**20)  # this process is large: torch imported, and more
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident, not just reserved
    empty = run_child([sys.executable, "-c", "pass"])["peak_rss_mb"]
    big = run_child([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert 1 < empty < 100, empty  # an empty interpreter, not this process's 300+ MB
    assert 200 < big["peak_rss_mb"] < 300, big
    with pytest.raises(RuntimeError, match="status 1:\\nwent wrong"):
        run_child([sys.executable, "-c", "import sys; sys.exit('went wrong')"])


@pytest.mark.slow
def test_the_streaming_section_runs(tmp_path):
    """Section 6 (not among the default sections: at full size it writes 200,000 files)."""
    out = tmp_path / "figures.json"
    argv = [sys.executable, "-m", "scripts.bench", "--tiny", "--sections", "6", "--repeats", "1"]
    argv += ["--json", str(out), "--workdir", str(tmp_path / "work")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {f["section"] for f in figures} == {"6"} and len(figures) == 13
    assert all("0 repeated" in f["name"] and "val: each once" in f["name"] for f in figures if "DDP" in f["name"])
