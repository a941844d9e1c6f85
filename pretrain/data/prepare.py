"""Prepare once: an image collection into litdata shards plus an index, for ``data=stream``.

``python -m pretrain.prepare SOURCE OUT`` reads an image folder (one subfolder per class, or a
flat folder of unlabeled images; ``SOURCE/train`` and ``SOURCE/test`` are the splits if both
are there), a CSV of ``path,label`` rows (paths relative to the CSV; no ``label`` column:
unlabeled), or a built-in data set (``digits``, ``mnist``, ``fashion_mnist``, ``faces``), and
writes ``OUT/SPLIT/`` as litdata shards (``litdata.optimize``, in parallel worker processes). A labeled
collection without a test split gets the fixed fifth that ``data=folder`` holds out as ``OUT/test/``.

The images stay encoded: a JPEG or PNG file is stored as it is, other formats and the built-in
sets as PNG; with ``--max-side N`` a larger image is shrunk so its longer side is N and encoded
again (JPEG stays JPEG). An unreadable file is stored as an empty placeholder, so that every
input has its place; the index marks it bad and no selection ever picks it.

The index (``OUT/SPLIT/pretext-index.npz``: label, height, width, good, path of every stored
item, in the shards' order) lets ``data=stream`` choose classes, label budgets and validation
splits without reading an image. ``OUT/pretext.json`` (classes, channels, mean/std measured on
a sample, the splits, the bad files) is written last and atomically: an OUT without it is a
half-finished preparation, which ``data=stream`` refuses and a rerun starts again.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrain.data.images import DataError
from pretrain.data.module import channel_stats
from pretrain.data.selection import stratified_split
from pretrain.data.sources import SOURCES, load_faces, load_source, read_image
from pretrain.data.stream import INDEX, MARKER, PARTIAL, PER_ITEM, decode_image, quiet_litdata
from pretrain.run.files import write_json
from pretrain.run.text import printable

BUILT_IN = (*SOURCES, "faces")
STATS_SAMPLE = 2000  # images decoded to measure mean/std: enough for three decimals


@dataclass(frozen=True)
class Split:
    """The inputs of one split: ``refs[i]`` is a file path, or ``(name, root, split, i)`` of a built-in set."""

    name: str
    refs: list
    labels: list[int]


def list_source(source: str, root: str | None = None) -> tuple[list[Split], tuple[str, ...]]:
    """The splits of SOURCE and its class names (empty for unlabeled images), without reading an image."""
    if source in BUILT_IN:
        sets = load_faces(root, None) if source == "faces" else load_source(source, root)
        splits = [
            Split(name, [(source, root, k, i) for i in range(len(s.labels))], s.labels.tolist())
            for k, (name, s) in enumerate(zip(("train", "test"), sets, strict=True))
            if len(s.labels)
        ]
        return splits, sets[0].classes
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _list_csv(path)
    if not path.is_dir():
        raise DataError(
            f"{printable(source)} is neither a folder of images, a .csv of path,label rows, nor a built-in data set "
            f"({', '.join(BUILT_IN)})"
        )
    if (path / "train").is_dir() and (path / "test").is_dir():
        (train, classes), (test, test_classes) = (_list_folder(path / s) for s in ("train", "test"))
        if test_classes != classes:
            raise DataError(f"{printable(path)}: train/ and test/ have different class folders")
        return [Split("train", *train), Split("test", *test)], classes
    (refs, labels), classes = _list_folder(path)
    return [Split("train", refs, labels)], classes


def _test_fifth_apart(split: Split) -> list[Split]:
    """A labeled collection without a test split: the fixed fifth that data=folder holds out in memory (drawn
    from all listed files) stored as a split of its own. A selection is a litdata subset read as one run per
    stretch of consecutive images, each with a fixed cost: holding this fifth out at training time would cut
    every epoch into runs of about five images."""
    rest, test = stratified_split(torch.tensor(split.labels), 0.2, seed=0)
    if not len(rest):  # an image or so per class: nothing would be left to train on, as in memory
        return [split]
    return [
        Split(name, [split.refs[i] for i in part.tolist()], [split.labels[i] for i in part.tolist()])
        for name, part in (("train", rest), ("test", test))
    ]


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _list_folder(folder: Path) -> tuple[tuple[list, list[int]], tuple[str, ...]]:
    """Class subfolders (any file in them is an image to read, or a bad file to report), or a flat folder."""
    entries = sorted(p for p in folder.iterdir() if _visible(p))
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        files = [str(p) for p in entries if p.is_file()]
        if not files:
            raise DataError(f"no images in {printable(folder)}: put images there, or one subfolder of images per class")
        return (files, [-1] * len(files)), ()
    refs, labels = [], []
    for label, d in enumerate(dirs):
        files = sorted(str(p) for p in d.rglob("*") if p.is_file() and _visible(p))
        refs += files
        labels += [label] * len(files)
    if not refs:
        raise DataError(f"no images in the class folders of {printable(folder)}")
    return (refs, labels), tuple(d.name for d in dirs)


def _list_csv(path: Path) -> tuple[list[Split], tuple[str, ...]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise DataError(f"{printable(path)} needs a header row with a 'path' column (and 'label' for labeled images)")
    refs = [str(path.parent / row["path"]) for row in rows]
    if "label" not in rows[0]:
        return [Split("train", refs, [-1] * len(refs))], ()
    classes = tuple(sorted({row["label"] for row in rows}))
    number = {c: i for i, c in enumerate(classes)}
    return [Split("train", refs, [number[row["label"]] for row in rows])], classes


class Encode:
    """What each preparation worker does with one input ``(ref, label)``: the stored item.

    Module-level and picklable: litdata starts its workers with ``spawn``."""

    def __init__(self, max_side: int | None) -> None:
        self.max_side = max_side

    def __call__(self, item: tuple) -> dict:
        ref, label = item
        try:
            data, height, width = self._encoded(ref)
        except DataError as err:
            data, height, width, bad = b"", 0, 0, str(err)
        else:
            bad = ""
        # The path as bytes: litdata would store a str that ends in .jpg as the image file it names.
        return {
            "image": data,
            "label": label,
            "height": height,
            "width": width,
            "path": _name(ref).encode(),
            "bad": bad.encode(),
        }

    def _encoded(self, ref) -> tuple[bytes, int, int]:
        from PIL import Image

        if isinstance(ref, tuple):  # an image of a built-in set, decoded once per worker (cached)
            name, root, split, i = ref
            sets = load_faces(root, None) if name == "faces" else load_source(name, root)
            image = sets[split].images[i]
            return _png(Image.fromarray(image.squeeze(0).numpy())), *image.shape[-2:]
        with open(ref, "rb") as f:
            data = f.read()
        image = read_image(ref, "RGB", data)  # decodes it whole: a damaged file is found here, not in training
        height, width = image.shape[-2:]
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            if self.max_side and max(height, width) > self.max_side:
                scale = self.max_side / max(height, width)
                height, width = max(1, round(height * scale)), max(1, round(width * scale))
                im = im.convert("L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB").resize(
                    (width, height), Image.Resampling.LANCZOS
                )
                return (_jpeg(im) if kind == "JPEG" else _png(im)), height, width
            if kind in ("JPEG", "PNG"):
                return data, height, width
            return _png(im.convert("L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB")), height, width


def _name(ref) -> str:
    return f"{ref[0]}:{('train', 'test')[ref[2]]}[{ref[3]}]" if isinstance(ref, tuple) else str(ref)


def _png(im) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def _jpeg(im) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=95)
    return out.getvalue()


def prepare(
    source: str,
    out: str | Path,
    max_side: int | None = None,
    workers: int = 2,
    on_bad_file: str = "error",
    root: str | None = None,
    chunk_bytes: str = "64MB",
) -> dict:
    """Prepare ``source`` into ``out`` (see the module's docstring); returns what ``pretext.json`` says."""
    from litdata import optimize

    if on_bad_file not in ("error", "skip"):
        raise DataError(f"--on-bad-file must be 'error' or 'skip', not {on_bad_file!r}")
    if max_side is not None and max_side < 1:
        raise DataError(f"--max-side={max_side} must be at least 1 pixel")
    out = Path(out)
    _claim(out)
    splits, classes = list_source(source, root)
    if classes and len(splits) == 1:
        splits = _test_fifth_apart(splits[0])
    bad_files: list[str] = []
    meta_splits = {}
    for split in splits:
        target = out / split.name
        start_method = multiprocessing.get_start_method(allow_none=True)
        try:
            with quiet_litdata():
                optimize(
                    fn=Encode(max_side),
                    inputs=list(zip(split.refs, split.labels, strict=True)),
                    output_dir=str(target),
                    num_workers=workers,
                    chunk_bytes=chunk_bytes,
                    reorder_files=False,
                    mode="overwrite",
                    start_method="spawn",
                )
        finally:  # optimize sets it for the whole process: the caller's DataLoaders would spawn their workers
            multiprocessing.set_start_method(start_method, force=True)
        index = _read_back(target)
        bad = [str(b) for b in index.pop("bad") if b]
        bad_files += bad
        np.savez(target / INDEX, **index)
        meta_splits[split.name] = {"count": int(index["good"].sum()), "bad": len(bad)}
    if bad_files:
        listing = "\n  ".join(bad_files)
        if on_bad_file == "error":
            shutil.rmtree(out)
            raise DataError(
                f"{len(bad_files)} unreadable file(s) in {printable(source)}:\n  {listing}\n"
                f"Remove them, or pass --on-bad-file=skip to leave them out; nothing was kept in {printable(out)}."
            )
        print(f"skipped {len(bad_files)} unreadable file(s):\n  {listing}", file=sys.stderr)
    stats = _stats(out / "train")
    meta = {
        "format": 1,
        "source": str(source),
        "classes": list(classes),
        "max_side": max_side,
        "splits": meta_splits,
        "bad_files": bad_files,
        **stats,
    }
    write_json(out / MARKER, meta)  # last, atomically: from now on OUT is complete
    (out / PARTIAL).unlink()
    return meta


def _claim(out: Path) -> None:
    """OUT is new, or a half-finished preparation of ours (started again from scratch); never anything else."""
    if (out / MARKER).is_file():
        raise DataError(f"{printable(out)} is already prepared ({MARKER} is there): delete it first, or choose another")
    if out.exists() and not (out / PARTIAL).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{printable(out)} exists and is not a preparation: choose a new or empty folder")
    if out.exists():
        shutil.rmtree(out)  # what an interrupted preparation left
    out.mkdir(parents=True)
    (out / PARTIAL).write_text("a preparation is under way, or was interrupted: run it again to finish it\n")


def _read_back(split_dir: Path) -> dict[str, np.ndarray]:
    """The index of a split, in the shards' order (workers finish in any order), from its stored items."""
    from litdata import StreamingDataset

    with quiet_litdata():
        dataset = StreamingDataset(str(split_dir))
        items = [dataset[i] for i in range(len(dataset))]
    return {
        "labels": np.array([it["label"] for it in items], dtype=np.int64),
        "heights": np.array([it["height"] for it in items], dtype=np.int32),
        "widths": np.array([it["width"] for it in items], dtype=np.int32),
        "good": np.array([not it["bad"] for it in items], dtype=bool),
        "paths": np.array([bytes(it["path"]).decode() for it in items]),
        "bad": np.array([bytes(it["bad"]).decode() for it in items]),
    }


def _stats(split_dir: Path) -> dict:
    """Per-channel mean/std (0..1 scale) of up to STATS_SAMPLE evenly spaced good images, as RGB and as gray."""
    from litdata import StreamingDataset

    index = np.load(split_dir / INDEX)
    good = np.flatnonzero(index["good"])
    if not len(good):
        raise DataError(f"no readable images in {printable(split_dir)}")
    sample = good[np.linspace(0, len(good) - 1, min(STATS_SAMPLE, len(good))).round().astype(int)]
    with quiet_litdata():
        dataset = StreamingDataset(str(split_dir), batch_decode=PER_ITEM)  # a sample: one item in many
        data = [dataset[int(i)]["image"] for i in sample]
    stats = {}
    for key, mode in (("rgb", "RGB"), ("gray", "L")):
        pixels = torch.cat([decode_image(d, mode).flatten(1) for d in data], dim=1)
        mean, std = channel_stats(pixels.unsqueeze(0))
        stats[key] = {"mean": list(mean), "std": list(std)}
    channels = 1 if all(decode_image(d).shape[0] == 1 for d in data[:64]) else 3
    return {"channels": channels, "stats": stats}
