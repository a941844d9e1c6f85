"""Section 4, scaling: supervised pretraining on Fashion-MNIST (Géron's MLP) through the pipeline,
in this process: images/s per batch size against the plain loop at that size; epoch time at 10%, 50%
and 100% of the training set, the 50% epoch against the straight line through the other two; resident memory across
the epochs of one run; and the peak resident memory of a whole ``python -m pretrain`` run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L

from scripts.bench_common import Figure, child_env, rss_mb, run_child, steady_rate, steady_seconds
from scripts.bench_overhead import build, overrides, pipeline_epochs, plain_epochs, with_callback

BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
SUBSET = 12_000  # images per epoch for the batch-size sweep: six sizes stay within minutes
FRACTIONS = (0.1, 0.5, 1.0)


class EpochMemory(L.Callback):
    """Resident memory of this process at the end of every training epoch."""

    def __init__(self) -> None:
        self.mb: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.mb.append(rss_mb())


def memory_per_epoch(argv: list[str], epochs: int, run_dir: Path) -> list[float]:
    probe = EpochMemory()
    with with_callback("supervised", probe):
        pipeline_epochs("supervised", argv, epochs, run_dir)
    return probe.mb


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    result = []
    subset = 1024 if args.tiny else SUBSET
    sizes = (32, 256) if args.tiny else BATCH_SIZES
    epochs = 3 if args.tiny else 4
    for size in sizes:
        argv = overrides("supervised", batch_size=size, budget=subset)
        pipeline, plain = [], []
        for r in range(args.repeats):
            pipeline.append(steady_rate(pipeline_epochs("supervised", argv, epochs, root / f"batch{size}-{r}"), subset))
            plain.append(steady_rate(plain_epochs("supervised", argv, epochs), subset))
        args.log(f"  batch {size}: pipeline {pipeline[-1]:,.0f} img/s, plain {plain[-1]:,.0f} img/s")
        result.append(
            Figure(
                "4", f"batch size {size}", "img/s", pipeline, plain, "plain loop", None, f"{subset:,} images an epoch"
            )
        )

    full = len(build("supervised", overrides("supervised"))["labels"])
    low, mid, top = (0.02, 0.03, 0.04) if args.tiny else FRACTIONS
    epochs = 3 if args.tiny else 8  # a line through noisy points: more epochs than the sweep above
    seconds = {
        fraction: [
            steady_seconds(pipeline_epochs("supervised", argv, epochs, root / f"f{fraction}-{r}"))
            for r in range(args.repeats)
        ]
        for fraction, argv in ((f, overrides("supervised", budget=round(f * full))) for f in (low, mid, top))
    }
    # Per repeat, the straight line through the smallest and the largest epoch: its slope is the
    # cost per image, its value at zero images the fixed cost of an epoch (hooks, logs, loaders).
    slopes = [(t - s) / (top - low) for s, t in zip(seconds[low], seconds[top], strict=True)]
    fixed = [s - slope * low for s, slope in zip(seconds[low], slopes, strict=True)]
    on_line = [a + slope * mid for a, slope in zip(fixed, slopes, strict=True)]
    for fraction in (low, top):
        result.append(
            Figure(
                "4",
                f"epoch time at {fraction:.0%} of the training set",
                "s",
                seconds[fraction],
                note=f"{round(fraction * full):,} images",
            )
        )
    result.append(
        Figure(
            "4",
            f"epoch time at {mid:.0%} of the training set, against the straight line through the other two",
            "s",
            seconds[mid],
            on_line,
            f"the line at {mid:.0%}",
            ("ratio", "<=", 1.15),
            f"{round(mid * full):,} images",
        )
    )
    result.append(
        Figure(
            "4",
            "fixed cost of an epoch (that line at zero images)",
            "s",
            fixed,
            seconds[top],
            f"the {top:.0%} epoch",
        )
    )

    epochs = 3 if args.tiny else 10
    argv = overrides("supervised", budget=subset)
    mb = memory_per_epoch(argv, epochs, root / "memory")
    growth = (mb[-1] - mb[1]) / (len(mb) - 2)
    result.append(
        Figure(
            "4",
            f"resident memory after epoch {epochs}",
            "MB",
            [mb[-1]],
            [mb[1]],
            "after epoch 2",
            ("ratio", "<=", 1.02),
            f"{growth:+.2f} MB an epoch; in this process",
        )
    )

    epochs = 1 if args.tiny else 2
    budget = ["data.label_budget=1024"] if args.tiny else []
    peak = [
        run_child(
            [
                sys.executable,
                "-m",
                "pretrain",
                "data=fashion_mnist",
                "task=supervised",
                *budget,
                f"trainer.max_epochs={epochs}",
                "trainer.enable_progress_bar=false",
                f"hydra.run.dir={root / f'peak-{r}'}",
            ],
            env=child_env(),
        )["peak_rss_mb"]
        for r in range(args.repeats)
    ]
    result.append(
        Figure(
            "4",
            "peak resident memory, python -m pretrain data=fashion_mnist",
            "MB",
            peak,
            None,
            "",
            None,
            "task=supervised, mlp",
        )
    )
    return result
