"""Is the from-scratch baseline as strong as a plain PyTorch loop of the same model and recipe?

For every seed, ``python -m finetune encoder=none OVERRIDES`` (run in-process) and a plain loop
that trains the same architecture (the backbone plus the same readout and linear head) on the
same labeled images (the data module's draw for that seed), with the same optimizer, learning
rate, batch size, epochs of at least ``data.min_batches_per_epoch`` batches and a cosine decay
to zero (``torch.optim.lr_scheduler``), without Lightning. Both are tested on the same test
images. Prints each side's mean, standard deviation and worst seed, and the paired difference
with its 95% interval; writes the figures to ``OUT/baseline_check.json``.

    PRETEXT_DATA=/path/to/data python -m scripts.baseline_check --seeds 10 --out outputs/baseline_check \\
        backbone=cnn data=fashion_mnist data.label_budget=100
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import finetune.__main__ as finetune_main
from finetune.report.stats import summarize
from pretrain.encoders import build_encoder, readout
from pretrain.run.files import write_json

REPO = Path(__file__).resolve().parents[1]

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="finetune", overrides=["encoder=none", *overrides, *QUIET])


def plain_run(cfg: DictConfig) -> float:
    """Test accuracy of the plain loop for ``cfg`` (a composed ``finetune`` config)."""
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    data.setup("fit")
    info = data.info
    images, labels = data.normalize(data.train_set.images), data.train_set.labels
    encoder = build_encoder(input_shape=info.input_shape, **OmegaConf.to_container(cfg.backbone, resolve=True))
    features, width = readout(cfg.head.pool, encoder.block_shapes()[-1])
    model = nn.Sequential(encoder, features, nn.Linear(width, info.num_classes))
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    # The recipe's epoch: the labeled images passed over until it has min_batches_per_epoch batches.
    size, batch = len(labels), cfg.data.batch_size
    passes = max(1, math.ceil((cfg.data.min_batches_per_epoch or 1) * batch / size))
    epoch_batches = [(start, min(start + batch, size * passes)) for start in range(0, size * passes, batch)]
    epoch_batches = [(a, b) for a, b in epoch_batches if b - a > 1]  # a batch of one breaks batch norm
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.trainer.max_epochs * len(epoch_batches))
    shuffle = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.trainer.max_epochs):
        order = torch.cat([torch.randperm(size, generator=shuffle) for _ in range(passes)])
        for start, end in epoch_batches:
            index = order[start:end]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    test_images, test_labels = data.test_set.images, data.test_set.labels
    with torch.no_grad():
        correct = sum(
            int((model(data.normalize(test_images[i : i + 1000])).argmax(1) == test_labels[i : i + 1000]).sum())
            for i in range(0, len(test_labels), 1000)
        )
    return correct / len(test_labels)


def side(name: str, values: list[float]) -> str:
    s = summarize([100 * v for v in values])
    worst = 100 * min(values)
    return f"{name}: {s.mean:.2f} ± {s.std:.2f} % (worst seed {worst:.2f}, 95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}])"


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("outputs/baseline_check"))
    parser.add_argument("overrides", nargs="*", help="overrides of python -m finetune, e.g. backbone=cnn")
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        cfg = config([*args.overrides, f"seed={seed}"])
        start = time.perf_counter()
        pipeline = finetune_main.run(cfg, args.out / "runs" / f"seed{seed}")["test_acc"]
        middle = time.perf_counter()
        plain = plain_run(cfg)
        rows.append({"seed": seed, "pipeline": pipeline, "plain": plain})
        print(
            f"seed {seed}: pipeline {100 * pipeline:.2f}% ({middle - start:.0f} s), plain loop {100 * plain:.2f}% "
            f"({time.perf_counter() - middle:.0f} s)",
            flush=True,
        )
    pipeline, plain = [r["pipeline"] for r in rows], [r["plain"] for r in rows]
    difference = summarize([100 * (a - b) for a, b in zip(pipeline, plain, strict=True)])
    lines = [
        f"python -m finetune encoder=none {' '.join(args.overrides)}, seeds 0..{args.seeds - 1}",
        side("pipeline", pipeline),
        side("plain loop", plain),
        f"pipeline - plain loop: {difference.mean:+.2f} points, 95% CI [{difference.ci_low:+.2f}, "
        f"{difference.ci_high:+.2f}] (paired by seed)",
    ]
    print("\n".join(lines))
    write_json(args.out / "baseline_check.json", {"overrides": args.overrides, "runs": rows, "summary": lines})


if __name__ == "__main__":
    main()
