"""Section 6 on a GPU (``--gpu --sections 6``): ResNet-50 at 224 px under bf16, trained on streamed images
against the same model stepping on random tensors already on the GPU, the rate no data path can beat.

The collection: ``--stream-sizes``' first size of JPEG crops (224 to 288 px) of scikit-learn's sample
photographs, made and prepared (``python -m pretrain.prepare``) with one worker per CPU core but two.
The streamed run is ``python -m pretrain`` as a user runs it: ``data=stream`` decoding and resizing to
224x224 in the same number of DataLoader workers, ``augment=light`` (crop and flip) on the GPU,
``task=supervised``, ``trainer=gpu`` (bf16-mixed, channels-last), batch 256, three epochs; its rate is
the images of the last two over their time, epoch ends and every worker start included. The upper
bound is the model and optimizer that run builds, stepped in a plain loop on one random batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning as L

from scripts.bench_common import Figure, child_env, clock, hydra_command, quiet, run_child
from scripts.bench_overhead import build, with_callback
from scripts.bench_stream import make_collection

SIDE, BATCH, EPOCHS = 224, 256, 3


class ImageClock(L.Callback):
    """Wall time and images of each training epoch, the GPU's queued work included."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.images = clock(pl_module.device), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append((clock(pl_module.device) - self.start, self.images))


def run_argv(out: Path, side: int, workers: int, cpu: bool) -> list[str]:
    return [
        "data=stream",
        f"data.root={out}",
        f"data.image_size=[{side},{side}]",
        f"data.batch_size={16 if cpu else BATCH}",
        f"data.num_workers={workers}",
        "data.val_size=0",
        f"backbone={'resnet18' if cpu else 'resnet50'}",
        "task=supervised",
        "augment=light",
        f"trainer={'default' if cpu else 'gpu'}",
        "online_eval.every_n_epochs=null",
        "+trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
    ]


def streamed_rate(argv: list[str], run_dir: Path) -> float:
    """The streamed run's images/s, measured in a process of its own as a user starts it (``main``):
    nothing this process did before (the preparation's workers, say) is shared with it."""
    result = run_dir.with_suffix(".json")
    run_child([sys.executable, "-m", __spec__.name, str(result), *argv, f"hydra.run.dir={run_dir}"], child_env())
    return json.loads(result.read_text())["images_per_s"]


def main() -> None:
    """``python -m scripts.bench_stream_gpu RESULT.json OVERRIDES...``: ``python -m pretrain OVERRIDES`` for
    ``EPOCHS`` epochs; the images of all but the first over their seconds go to RESULT.json."""
    import pretrain.__main__ as pretrain_main

    result, argv = Path(sys.argv[1]), sys.argv[2:]
    timer = ImageClock()
    with with_callback("supervised", timer):
        hydra_command(pretrain_main.main, [*argv, f"trainer.max_epochs={EPOCHS}"])
    seconds, images = (sum(column) for column in zip(*timer.epochs[1:], strict=True))
    result.write_text(json.dumps({"images_per_s": images / seconds}))


def random_tensor_rate(argv: list[str], side: int, steps: int) -> float:
    """Steps of the run's model and optimizer on one random batch on its device, bf16 autocast on a GPU."""
    import torch
    import torch.nn.functional as F

    with quiet():
        b = build("supervised", argv)
    model, optimizer, device = b["model"], b["model"].configure_optimizers(), b["device"]
    x = torch.randn(b["batch_size"], 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b["batch_size"],), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(max(3, steps // 5)):  # cuDNN's algorithm choice and the allocator's first blocks
        step()
    start = clock(device)
    for _ in range(steps):
        step()
    return steps * b["batch_size"] / (clock(device) - start)


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    from pretrain.data.prepare import prepare

    workers = max(1, (os.cpu_count() or 2) - 2)
    n = 200 if args.tiny else int(args.stream_sizes.split(",")[0])
    start = time.perf_counter()
    src = make_collection(root / "src", n, sides=(SIDE, SIDE + 64), workers=workers)
    made = time.perf_counter() - start
    out = root / "out"
    start = time.perf_counter()
    prepare(str(src), out, workers=workers)
    args.log(f"  {n:,} images made in {made:.0f} s, prepared at {n / (time.perf_counter() - start):,.0f} img/s")
    side = 64 if args.tiny else SIDE
    argv = run_argv(out, side, workers, cpu=args.tiny)
    streamed, bound = [], []
    for repeat in range(args.repeats):
        streamed.append(streamed_rate(argv, root / f"run{repeat}"))
        bound.append(random_tensor_rate(argv, side, steps=5 if args.tiny else 60))
        args.log(f"  repeat {repeat}: streamed {streamed[-1]:,.0f} img/s, random tensors {bound[-1]:,.0f} img/s")
    return [
        Figure(
            "6",
            f"streamed training, ResNet-50 {SIDE}px bf16, {n:,} JPEGs",
            "img/s",
            streamed,
            bound,
            "same model on random tensors on the GPU",
            ("ratio", ">=", 0.8),
            f"{workers} workers decode + resize, augment=light on the GPU, batch {BATCH}",
        )
    ]


if __name__ == "__main__":
    main()
