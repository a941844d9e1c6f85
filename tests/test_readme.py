"""Every command of the README's ```bash blocks runs, in order, and exits with status 0.

How a command is run: its placeholders are replaced (``PLACEHOLDERS``), bash expands it into words
(quotes, ``$(...)``, comments, as a user's shell would), and ``python -m pretrain|finetune`` run in
this process (``hydra_command``: the imports are paid once, ~7 s a command here otherwise), other
``python -m`` modules through ``runpy``. Every pretraining and fine-tuning command is shortened with
``debug=quick``, and with the overrides ``SHORTEN`` gives for it; ``SKIP`` names the commands not run,
and why. A README command that matches neither, or an entry that matches no command, fails the test:
the tables follow the README.
"""

from __future__ import annotations

import glob
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, data_root, hydra_command
from synthetic import image_folder

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main

DOCUMENTS = [REPO / "README.md"]  # not yet docs/*.md: their SLURM, GPU and benchmark commands need tables of their own

SKIP = {  # a fragment of the command: why it is not run
    "python3 -m venv": "the test runs in the installed environment",
    ".venv/bin/activate": "the test runs in the installed environment",
    "pip install": "installs packages (needs the network); the test runs in the installed environment",
    "pytest": "the test suite itself",
    "scripts/fashion_study.sh": "the full transfer study: hours of training",
    "hydra/launcher=slurm": "needs a SLURM cluster (tests/test_slurm.py runs the launcher on a local one)",
}

SHORTEN = {  # a fragment of the command: overrides added after debug=quick
    "'seed=range(5)'": ["seed=0,1"],
    "'seed=range(10)'": ["seed=0,1"],
    # one labeled image per class, k-NN only: 2 runs of the protocol's 150
    "experiment=protocol": ["eval=knn", "data.labels_per_class=1", "seed=0"],
    "backbone=vit task=masked": ["data.batch_size=16"],
    "data=stream": ["data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0"],
    "pretrain.prepare": ["--workers=1"],  # no worker start-ups
    "schedule.unfreeze_epoch=10": ["schedule.unfreeze_epoch=1"],  # debug=quick trains 2 epochs
    "data.label_budget=200": ["data.label_budget=12", "data.val_size=3"],
}

# A fragment of the command: the pretraining run first, whose encoder (the newest) the command's E.safetensors is.
BEFORE = {
    "reuse_blocks=3": "python -m pretrain",  # the block follows data=stream's: fine-tune the quick start's
    # the protocol's data and backbone
    "experiment=protocol": "python -m pretrain data=fashion_mnist backbone=cnn data.batch_size=32",
    "python -m pretrain.portable": "python -m pretrain",  # its check feeds 8x8 digits
}


def placeholders(tmp: Path) -> list[tuple[str, object]]:
    """(pattern, replacement or function of the match), applied in order."""

    def newest(pattern: str) -> str:
        found = sorted(glob.glob(pattern), key=os.path.getmtime)
        assert found, f"no {pattern} yet: a README command before this one should have made it"
        return found[-1].rstrip("/")

    return [
        (r"/path/to/data", str(data_root())),
        (r"/path/to/images", str(tmp / "images")),
        (r"/data/prepared", str(tmp / "prepared")),
        (r"\b([\w/]+)/DATE/TIME", lambda m: newest(f"{m[1]}/*/*/")),
        (r"(?<![\w/.])E\.safetensors", lambda m: newest("outputs/pretrain/*/*/encoder.safetensors")),
    ]


def readme_commands(document: Path) -> list[str]:
    """The commands of ``document``'s ```bash blocks, one a line (a trailing backslash continues a line),
    those joined by ``&&`` apart."""
    commands, block = [], None
    for line in document.read_text().splitlines():
        if block is None:
            block = [] if line.strip() == "```bash" else None
        elif line.strip() == "```":
            text = "\n".join(block).replace("\\\n", " ")
            lines = [c for c in text.splitlines() if c.strip() and not c.lstrip().startswith("#")]
            commands += [c.strip() for line in lines for c in line.split(" && ")]
            block = None
        else:
            block.append(line)
    return commands


def matching(table: dict, command: str) -> list:
    return [key for key in table if key in command]


def words(command: str) -> list[str]:
    """The command as bash splits and expands it (the line is trusted: it is the README's)."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def run(argv: list[str], shorten: list[str], monkeypatch) -> int:
    """``argv`` (``python -m MODULE ...`` or ``python -c CODE``) in this process, with ``shorten`` added
    (and ``debug=quick`` before it for a training command); its exit status."""
    assert argv[0] in ("python", "python3") and argv[1] in ("-m", "-c"), f"not a python command: {argv}"
    if argv[1] == "-c":
        exec(compile(argv[2], "<README>", "exec"), {"__name__": "__main__"})
        return 0
    module, args = argv[2], argv[3:]
    if module in ("pretrain", "finetune"):
        main = pretrain_main.main if module == "pretrain" else finetune_main.main
        quick = [] if any(a.startswith("resume=") for a in args) else ["debug=quick"]  # a resumed run keeps its config
        return hydra_command(main, [*args, *quick, *shorten], monkeypatch)
    monkeypatch.setattr(sys, "argv", [module, *args, *shorten])
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit:
        return exit.code or 0


def next_second(previous: int) -> None:
    """Wait for the next second if it is still ``previous``."""
    if int(time.time()) == previous:
        time.sleep(1 - time.time() % 1)


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_command_runs(document, tmp_path, monkeypatch):
    if data_root() is None:
        pytest.skip("the README's commands read the real data sets (set PRETEXT_DATA)")
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "images", classes=2, per_class=24, size=(20, 16))
    commands = readme_commands(document)
    for table in (SKIP, SHORTEN, BEFORE):
        unused = [key for key in table if not any(key in c for c in commands)]
        assert not unused, f"{document.name} has no command with {unused}: update this test's tables"
    ended = 0
    for command in [c for line in commands for c in [*(BEFORE[k] for k in matching(BEFORE, line)), line]]:
        if matching(SKIP, command):
            continue
        for pattern, replacement in placeholders(tmp_path):
            command = re.sub(pattern, replacement, command)
        argv = words(command)
        if argv[0] == "export":
            monkeypatch.setenv(*argv[1].split("=", 1))
            continue
        shorten = [arg for key in matching(SHORTEN, command) for arg in SHORTEN[key]]
        next_second(ended)  # run folders are named by the second they start in
        torch.manual_seed(0)
        assert run(argv, shorten, monkeypatch) == 0, f"{document.name}: {command}"
        ended = int(time.time())
