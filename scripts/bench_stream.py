"""Section 6, streamed data (data=stream) at two collection sizes: preparation rate, time to the first
training step, peak memory of a one-epoch run, training img/s against torchvision's ImageFolder, DDP shares.

The collection is made on the fly: random crops of scikit-learn's two sample photographs, 96 to 128 px,
JPEG-encoded, in 10 class folders (``--stream-sizes``, default 10,000 and 200,000 images; ``--tiny``: 200).
Both readers decode with torchvision.io and resize to 96x96 in 2 DataLoader workers, batches of 128, shuffled;
the streamed batches then get the pipeline's own flips and normalization, the ImageFolder ones the same ops.
ImageFolder with its default loader (PIL) is measured beside them, and the repeats of all three interleave.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

from scripts.bench_common import REPO, Figure, child_env, run_child

SIDE, BATCH, WORKERS = 96, 128, 2


def make_collection(folder: Path, n: int, seed: int = 0, sides: tuple[int, int] = (96, 128), workers: int = 1) -> Path:
    """``n`` JPEG crops (``sides`` px, drawn per image) of the sample photographs, in class folders c0..c9,
    written by ``workers`` processes."""
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    parts = [(folder, range(i, n, workers), seed + i, sides) for i in range(workers)]
    if workers == 1:
        _write_crops(*parts[0])
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.starmap(_write_crops, parts)
    return folder


def _write_crops(folder: Path, indices: range, seed: int, sides: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in indices:
        photo = photos[i % 2]
        h, w = rng.integers(sides[0], sides[1] + 1, size=2)
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        Image.fromarray(photo[y : y + h, x : x + w]).save(folder / f"c{i % 10}" / f"{i}.jpg", quality=90)


def stream_epoch(out: Path, val_size: float = 0) -> tuple[float, int]:
    """One epoch of streamed training batches, flipped and normalized as a training step receives them."""
    from pretrain.data.stream import StreamDataModule

    dm = StreamDataModule(
        name="stream", root=str(out), image_size=[SIDE, SIDE], num_workers=WORKERS, val_size=val_size, batch_size=BATCH
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    start, images = time.perf_counter(), 0
    for x, y in loader:
        x = dm.normalize(_flip(x.float()))
        images += len(y)
    return time.perf_counter() - start, images


def memory_epoch(src: Path) -> tuple[float, float, int]:
    """The in-memory path on the same files (data=folder): seconds to decode them all, then one epoch as above."""
    from pretrain.data.module import ImageDataModule
    from pretrain.data.sources import load_source

    load_source.cache_clear()
    start = time.perf_counter()
    dm = ImageDataModule(name="folder", root=str(src), image_size=[SIDE, SIDE], grayscale=False, val_size=0)
    dm.batch_size = BATCH
    dm.setup("fit")
    decoded = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for x, y in dm.train_dataloader():
        x = dm.normalize(_flip(x.float()))
        images += len(y)
    return decoded, time.perf_counter() - start, images


def _flip(x):
    from pretrain.data.augment import Augment

    return Augment(hflip=True)(x)  # a flip only moves pixels: the 0..255 floats stay as they are


def imagefolder_epoch(src: Path, pil: bool = False) -> tuple[float, int]:
    """The same epoch through torchvision: ImageFolder decoding with torchvision.io (``pil``: with its default
    loader, PIL), resized to 96x96 in the workers."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    from pretrain.data.module import normalize

    resize = v2.Resize([SIDE, SIDE], antialias=True)
    if pil:
        dataset = ImageFolder(str(src), transform=v2.Compose([v2.PILToTensor(), resize]))
    else:
        dataset = ImageFolder(
            str(src), loader=functools.partial(decode_image, mode=ImageReadMode.RGB), transform=resize
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS)
    start, images = time.perf_counter(), 0
    for x, y in loader:
        x = normalize(_flip(x.float()), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        images += len(y)
    return time.perf_counter() - start, images


def pretrain_argv(out: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pretrain",
        "data=stream",
        f"data.root={out}",
        f"data.image_size=[{SIDE},{SIDE}]",
        f"data.batch_size={BATCH}",
        f"data.num_workers={WORKERS}",
        "backbone=cnn",
        "online_eval.every_n_epochs=null",
        "data.val_size=0",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def ddp_check(out: Path, folder: Path) -> str:
    """Two CPU processes, two epochs: duplicates within an epoch, and evaluation images missed or repeated."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    run_child([sys.executable, str(REPO / "tests" / "stream_ddp_probe.py"), str(out), str(folder)], child_env())
    seen = [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]
    repeats = sum(len(a + b) - len(set(a + b)) for a, b in zip(seen[0]["train"], seen[1]["train"], strict=True))
    left = [
        len(seen[0]["train_set"]) - len(set(a + b)) for a, b in zip(seen[0]["train"], seen[1]["train"], strict=True)
    ]
    val = sorted(seen[0]["val"] + seen[1]["val"]) == sorted(seen[0]["val_set"])
    return f"train: {repeats} repeated, {max(left)} left out an epoch; val: {'each once' if val else 'NOT each once'}"


def figures(args: argparse.Namespace, root: Path) -> list[Figure]:
    from pretrain.data.prepare import prepare

    sizes = [200, 400] if args.tiny else [int(n) for n in args.stream_sizes.split(",")]
    keys = ("prep", "first", "rss", "stream", "stream_val", "folder", "pil", "memory", "decode", "ddp")
    rows: dict[str, list] = {k: [] for k in keys}
    for n in sizes:
        src = make_collection(root / f"src{n}", n)
        out = root / f"out{n}"
        start = time.perf_counter()
        prepare(str(src), out, workers=WORKERS)
        rows["prep"].append(n / (time.perf_counter() - start))
        args.log(f"  N={n}: prepared at {rows['prep'][-1]:,.0f} img/s")
        first = run_child(pretrain_argv(out, root / f"first{n}", "+trainer.max_steps=1"), child_env())
        rows["first"].append(first["wall"])
        epoch = run_child(pretrain_argv(out, root / f"epoch{n}", "trainer.max_epochs=1"), child_env())
        rows["rss"].append(epoch["peak_rss_mb"])
        stream_epoch(out)  # warm the page cache for both readers alike
        epochs = {
            "stream": functools.partial(stream_epoch, out),
            "stream_val": functools.partial(stream_epoch, out, 0.1),
            "folder": functools.partial(imagefolder_epoch, src),
            "pil": functools.partial(imagefolder_epoch, src, pil=True),
        }
        for key in epochs:
            rows[key].append([])
        for _ in range(args.repeats):  # interleaved: the machine's load changes between repeats
            for key, epoch in epochs.items():
                seconds, images = epoch()
                rows[key][-1].append(images / seconds)
        decoded, seconds, images = memory_epoch(src)
        rows["decode"].append(decoded)
        rows["memory"].append(images / seconds)
        rows["ddp"].append(ddp_check(out, root / f"ddp{n}"))
        args.log(f"  N={n}: first step {rows['first'][-1]:.1f} s, peak {rows['rss'][-1]:.0f} MB, {rows['ddp'][-1]}")
    small, large = sizes
    return [
        Figure(
            "6",
            f"preparation rate, N={large:,} (baseline: N={small:,})",
            "img/s",
            [rows["prep"][1]],
            [rows["prep"][0]],
            f"N={small:,}",
            note=f"{WORKERS} workers",
        ),
        Figure(
            "6",
            f"time to first training step, N={large:,} (baseline: N={small:,})",
            "s",
            [rows["first"][1]],
            [rows["first"][0]],
            f"N={small:,}",
            ("ratio", "<=", 1.2),
            "whole command; target also < 15 s",
        ),
        Figure(
            "6",
            f"peak resident memory, one epoch, N={large:,} (baseline: N={small:,})",
            "MB",
            [rows["rss"][1]],
            [rows["rss"][0]],
            f"N={small:,}",
            ("ratio", "<=", 1.1),
            "training process",
        ),
        *[
            Figure(
                "6",
                f"streamed training, N={n:,}",
                "img/s",
                rows["stream"][i],
                rows["folder"][i],
                f"torchvision ImageFolder, {WORKERS} workers",
                ("ratio", ">=", 1.0),
                f"torchvision.io decode + resize {SIDE}px, flips, normalize; batch {BATCH}",
            )
            for i, n in enumerate(sizes)
        ],
        *[
            Figure(
                "6",
                f"streamed training, a random tenth held out for validation, N={n:,}",
                "img/s",
                rows["stream_val"][i],
                rows["folder"][i],
                f"torchvision ImageFolder, {WORKERS} workers",
                ("ratio", ">=", 1.0),
                "the training images are a scattered selection of the shards (data.val_size=0.1, the default)",
            )
            for i, n in enumerate(sizes)
        ],
        *[
            Figure(
                "6",
                f"torchvision ImageFolder with its default loader (PIL), N={n:,}",
                "img/s",
                rows["pil"][i],
                rows["folder"][i],
                "the same, decoding with torchvision.io",
                note="for reference: the decoder's share",
            )
            for i, n in enumerate(sizes)
        ],
        *[
            Figure(
                "6",
                f"in-memory (data=folder) training epoch, N={n:,}",
                "img/s",
                [rows["memory"][i]],
                [statistics.median(rows["stream"][i])],
                "streamed",
                note=f"after decoding all N once at start-up: {rows['decode'][i]:.1f} s",
            )
            for i, n in enumerate(sizes)
        ],
        *[
            Figure("6", f"DDP, 2 CPU processes, N={n:,}: {rows['ddp'][i]}", "", [0.0], note="each image once")
            for i, n in enumerate(sizes)
        ],
    ]
