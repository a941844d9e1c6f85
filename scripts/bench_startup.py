"""Section 3, start-up: the wall time of a complete small fine-tuning run from the command line (200
labeled images, 20 epochs, tested on 2,000 images: the study's from-scratch run), how much of it passes
before the first training step, and a Hydra multirun of 10 such runs against 10 times one run.

Run as a script, this file is the child that times the first step:
``python -m scripts.bench_startup STAMP MODULE ARGS...`` runs ``python -m MODULE ARGS...`` and writes
the wall-clock time of its first training step to the file STAMP.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scripts.bench_common import Figure, child_env, run_child

RUN = ["experiment=fashion_transfer", "encoder=none", "trainer.enable_progress_bar=false"]


def import_seconds() -> float:
    """Wall time of starting Python and importing the fine-tuning command, nothing run."""
    return run_child([sys.executable, "-c", "import finetune.__main__"], env=child_env())["wall"]


def timed_run(root: Path, name: str, extra: list[str]) -> tuple[float, float]:
    """(wall seconds of the whole run, seconds from its start to its first training step)."""
    stamp = root / f"{name}.first-step"
    argv = [sys.executable, "-m", __spec__.name, str(stamp), "finetune", *RUN, *extra, f"hydra.run.dir={root / name}"]
    start = time.time()
    wall = run_child(argv, env=child_env())["wall"]
    return wall, float(stamp.read_text()) - start


def sweep_seconds(root: Path, name: str, runs: int, extra: list[str]) -> float:
    argv = [
        sys.executable,
        "-m",
        "finetune",
        "-m",
        *RUN,
        *extra,
        f"seed=range({runs})",
        f"hydra.sweep.dir={root / name}",
    ]
    return run_child(argv, env=child_env())["wall"]


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    extra = ["data.label_budget=20", "trainer.max_epochs=2", "schedule.unfreeze_epoch=1"] if args.tiny else []
    runs = 2 if args.tiny else 10
    if not args.tiny:
        timed_run(root, "warmup", extra)  # the first start reads Python's files from disk; later ones from its cache
    walls, firsts, imports, sweeps = [], [], [], []
    for r in range(args.repeats):
        wall, first = timed_run(root, f"run-{r}", [*extra, "seed=0"])
        walls.append(wall)
        firsts.append(first)
        imports.append(import_seconds())
        sweeps.append(sweep_seconds(root, f"sweep-{r}", runs, extra))
        args.log(f"  start-up repeat {r}: run {wall:.2f} s, first step after {first:.2f} s, sweep {sweeps[-1]:.1f} s")
    return [
        Figure(
            "3",
            "one fine-tuning run from the command line",
            "s",
            walls,
            None,
            "",
            ("measured", "<=", 15),
            "200 images, 20 epochs, test on 2,000",
        ),
        Figure("3", "... of which before its first training step", "s", firsts, walls, "the whole run"),
        Figure("3", "... of which starting Python and importing", "s", imports, walls, "the whole run"),
        Figure(
            "3",
            f"Hydra multirun of {runs} such runs",
            "s",
            sweeps,
            [runs * w for w in walls],
            f"{runs} x one run",
            ("ratio", "<=", 0.5),
            "one process: no re-import, data decoded once",
        ),
    ]


def first_step_child() -> None:
    import runpy

    import lightning as L

    import pretrain.run.trainer

    stamp, module, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if not stamp.exists():
                stamp.write_text(repr(time.time()))

    build_trainer = pretrain.run.trainer.build_trainer  # the command imports it from here when it starts
    pretrain.run.trainer.build_trainer = lambda c, d, cb=(), faults=None: build_trainer(
        c, d, [*cb, FirstStep()], faults
    )
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    first_step_child()
