"""The benchmark runs end to end (tiny sizes, every section): it cannot rot unnoticed. It times nothing here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_benchmark_runs_every_section_and_prints_its_table(real_data, tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
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
        env={**os.environ, "PRETEXT_DATA": str(real_data)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {f["section"] for f in figures} == {"1", "2", "3", "4", "5"}
    for f in figures:
        assert all(v == v for v in f["measured"]), f  # no NaN
        assert f["name"] in done.stdout
    assert "| # | figure | measured | baseline | ratio | target | met |" in done.stdout
