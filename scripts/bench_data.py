"""Section 1, the data path: one epoch of shuffled, normalized Fashion-MNIST training batches (batch 256)
through the project's data module, against torchvision's ``FashionMNIST`` with ``ToTensor`` and
``Normalize`` in a standard ``DataLoader``, each at its best worker count on this machine.

The project's batches are what a training step receives: indexed out of the uint8 tensor held in memory,
then converted and normalized by ``on_after_batch_transfer`` (on the step's device, here the CPU).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

from scripts.bench_common import Figure, data_root

BATCH = 256


def data_module():
    from pretrain.data.module import ImageDataModule

    data = ImageDataModule(name="fashion_mnist", root=data_root(), val_size=0, batch_size=BATCH, seed=0)
    data.setup("fit")
    return data


def project_epoch(limit: int | None) -> tuple[float, int]:
    """Wall seconds and images of one epoch through ``ImageDataModule`` (data already decoded)."""
    data = data_module()
    start, images = time.perf_counter(), 0
    for i, batch in enumerate(itertools.islice(data.train_dataloader(), limit)):
        x, _ = data.on_after_batch_transfer(batch, i)
        images += len(x)
    return time.perf_counter() - start, images


def torchvision_epoch(workers: int, limit: int | None) -> tuple[float, int]:
    """Wall seconds and images of one epoch through torchvision's data set and a DataLoader, normalized
    as the project normalizes."""
    import torch
    from torchvision import datasets, transforms

    mean, std = data_module().info.mean, data_module().info.std
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = datasets.FashionMNIST(data_root(), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    start, images = time.perf_counter(), 0
    for x, _ in itertools.islice(loader, limit):
        images += len(x)
    return time.perf_counter() - start, images


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    limit = 4 if args.tiny else None
    project_epoch(limit)  # decode once: every later epoch (and run, in a sweep) starts from the cache
    ours = []
    for _ in range(args.repeats):
        seconds, images = project_epoch(limit)
        ours.append(images / seconds)
    best: tuple[float, int, list[float]] | None = None
    for workers in range((os.cpu_count() or 1) + 1):
        rates = []
        for _ in range(args.repeats):
            seconds, images = torchvision_epoch(workers, limit)
            rates.append(images / seconds)
        args.log(f"  torchvision DataLoader, {workers} workers: {statistics.median(rates):,.0f} img/s")
        if best is None or statistics.median(rates) > best[0]:
            best = (statistics.median(rates), workers, rates)
    assert best is not None
    _, workers, rates = best
    return [
        Figure(
            "1",
            "data path, one training epoch (ours: in-memory uint8, indexed, no workers)",
            "img/s",
            ours,
            rates,
            f"torchvision DataLoader, {workers} workers",
            ("ratio", ">=", 20),
            f"batch {BATCH}, shuffled, normalized",
        )
    ]
