"""Section 5, Géron's whole transfer study: ``scripts/fashion_study.sh`` end to end (supervised and autoencoder
pretraining, 10 seeds each of scratch and transfer on 200 sandal/shirt images, the report), wall time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.bench_common import REPO, Figure, child_env, run_child


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    env = child_env(PYTHON=sys.executable)
    if args.tiny:
        env.update(
            SEEDS="0,1",
            PRETRAIN_ARGS="data.label_budget=512 trainer.max_epochs=1",
            FINETUNE_ARGS="trainer.max_epochs=2 schedule.unfreeze_epoch=1",
        )
    walls = []
    for r in range(args.study_repeats):
        walls.append(
            run_child(["bash", str(REPO / "scripts" / "fashion_study.sh"), str(root / f"study-{r}")], env=env)["wall"]
        )
        args.log(f"  study repeat {r}: {walls[-1]:.0f} s")
    return [
        Figure(
            "5",
            "scripts/fashion_study.sh, the whole study",
            "s",
            walls,
            None,
            "",
            ("measured", "<=", 600),
            "2 encoders x 10 seeds + scratch, report",
        )
    ]
