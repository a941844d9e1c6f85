"""Downstream check of the pretext tasks gan, masked, greedy autoencoder and siamese, on real data.

Each task pretrains one encoder (budgets below: a few CPU minutes each), then its encoder
and the same backbone from random weights are fine-tuned with ``python -m finetune``'s
recipe over several seeds, on the same labeled images per seed:

- gan, masked, greedy: pretrained on Fashion-MNIST training images without labels; fine-tuned
  on 200 labeled images of sandal vs shirt and of pullover vs coat, tested on the official
  test images of those classes (2,000 per pair).
- siamese: pretrained on people s1..s30 of the AT&T faces (5 of them held out for
  validation); fine-tuned as a 10-way classifier of s31..s40 with 2 labeled images each,
  tested on their other 8 each.

    PRETEXT_DATA=/path/to/data python -m scripts.downstream --out outputs/downstream --seeds 5

Runs already done (a results.json in their folder) are skipped, so an interrupted study
resumes. Prints a markdown table and writes it, with every per-seed figure, to OUT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.run.files import write_json, write_text

REPO = Path(__file__).resolve().parents[1]

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
FASHION_PAIRS = {"sandal vs shirt": "[sandal,shirt]", "pullover vs coat": "[pullover,coat]"}
UNSEEN_PEOPLE = "[" + ",".join(f"s{i}" for i in range(31, 41)) + "]"

# Pretraining budgets: a few minutes each on 2 shared CPU cores. Fashion-MNIST runs use the
# training split without labels (all 10 classes, 54,000 images after the 10% validation
# hold-out), of which they see the first N shuffled batches.
FASHION = ["data=fashion_mnist", "+trainer.limit_val_batches=2"]
STUDIES = {
    "gan": {
        "backbone": "cnn",
        "pretrain": [
            *FASHION,
            "task=gan",
            "data.batch_size=64",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=400",
        ],
    },
    "masked": {
        "backbone": "vit",
        "pretrain": [
            *FASHION,
            "task=masked",
            "data.batch_size=64",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1500",
        ],
    },
    "greedy autoencoder": {
        "backbone": "cnn",
        "pretrain": [
            *FASHION,
            "task=autoencoder",
            "task.greedy=true",
            "task.stage_epochs=1",  # one stage per block: 3 stages, 3 epochs
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=200",
        ],
    },
    "siamese": {
        "backbone": "cnn",
        "pretrain": ["data=faces", f"data.exclude_classes={UNSEEN_PEOPLE}", "task=siamese", "trainer.max_epochs=6"],
    },
}


def targets(task: str) -> dict[str, list[str]]:
    """The fine-tuning problems of a task: name -> data overrides."""
    if task == "siamese":
        # 2 labeled images of each of 10 unseen people; test on their other 8. One batch of 20
        # is a single step an epoch, hence more epochs (the same for scratch and pretrained).
        return {
            "10 unseen people": [
                "data=faces",
                f"data.classes={UNSEEN_PEOPLE}",
                "data.label_budget=20",
                "data.batch_size=10",
                "trainer.max_epochs=60",
            ]
        }
    return {
        name: ["data=fashion_mnist", f"data.classes={classes}", "data.label_budget=200"]
        for name, classes in FASHION_PAIRS.items()
    }


def config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def cached(run_dir: Path, make) -> dict:
    results = run_dir / "results.json"
    if results.is_file():
        return json.loads(results.read_text())
    return make()


def study(task: str, out: Path, seeds: int) -> list[dict]:
    spec = STUDIES[task]
    backbone = f"backbone={spec['backbone']}"
    pre_dir = out / "pretrain" / task.replace(" ", "_")
    start = time.perf_counter()
    pre = cached(pre_dir, lambda: pretrain_main.run(config("pretrain", [backbone, *spec["pretrain"], *QUIET]), pre_dir))
    print(f"[{task}] pretrained in {time.perf_counter() - start:.0f}s: {pre['metrics']}", flush=True)
    rows = []
    for target, data in targets(task).items():
        accuracy = {"scratch": [], "pretrained": []}
        for seed in range(seeds):
            for kind, encoder in (("scratch", "none"), ("pretrained", pre["encoder_file"])):
                # Scratch runs depend on the backbone, target and seed only: shared between tasks.
                tag = f"scratch_{spec['backbone']}" if kind == "scratch" else task.replace(" ", "_")
                run_dir = out / "finetune" / target.replace(" ", "_") / tag / f"seed{seed}"
                overrides = [backbone, *data, f"encoder={encoder}", f"seed={seed}", *QUIET]
                result = cached(run_dir, lambda d=run_dir, o=overrides: finetune_main.run(config("finetune", o), d))
                accuracy[kind].append(result["test_acc"])
                print(f"[{task}] {target} seed {seed} {kind}: {result['test_acc']:.4f}", flush=True)
        rows.append(
            {
                "task": task,
                "backbone": spec["backbone"],
                "target": target,
                "scratch": accuracy["scratch"],
                "pretrained": accuracy["pretrained"],
                "pretext_metrics": pre["metrics"],
            }
        )
    return rows


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| task | backbone | fine-tuned on | scratch acc % | pretrained acc % | mean gain | median gain | better |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gains = [p - s for p, s in zip(r["pretrained"], r["scratch"], strict=True)]
        better = sum(g > 0 for g in gains)
        lines.append(
            f"| {r['task']} | {r['backbone']} | {r['target']} | {mean_std(r['scratch'])} | {mean_std(r['pretrained'])} "
            f"| {100 * statistics.mean(gains):+.2f} | {100 * statistics.median(gains):+.2f} "
            f"| {better}/{len(gains)} seeds |"
        )
    lines += ["", "Gains: pretrained minus scratch in accuracy points, paired by seed (the same labeled images);"]
    lines += ["better: the seeds where pretrained beat scratch.", ""]
    lines += ["Per seed (test accuracy %, seeds 0..n-1):", ""]
    for r in rows:
        fmt = ", ".join
        lines.append(
            f"- {r['task']}, {r['target']}: scratch {fmt(f'{100 * a:.2f}' for a in r['scratch'])}; "
            f"pretrained {fmt(f'{100 * a:.2f}' for a in r['pretrained'])}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/downstream"))
    parser.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds per target (default 5)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(STUDIES), default=list(STUDIES))
    args = parser.parse_args()
    rows = [row for task in args.tasks for row in study(task, args.out.resolve(), args.seeds)]
    text = table(rows)
    write_text(args.out / "table.md", text)
    write_json(args.out / "summary.json", rows)
    print(text)


if __name__ == "__main__":
    main()
