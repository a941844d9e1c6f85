"""Image data sets held in memory as uint8 tensors and served as whole batches.

A data set is decoded once per process into ``(N, C, H, W)`` uint8 tensors. A batch is
one indexing operation on those tensors; it is converted to float, augmented and
normalized on the device it trains on (``on_after_batch_transfer``), so the hot path has
no per-sample Python work and no PIL.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from pretrain.augment import Augment, augment_problems
from pretrain.run.text import printable

DATA_ENV = "PRETEXT_DATA"
"""Environment variable naming the folder that holds torchvision-layout data sets."""


class DataError(ValueError):
    """A data set cannot be found or a selection from it cannot be made."""


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data, and what an encoder file records."""

    name: str
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- sources: each returns (train, test) ---------------------------------------------------


def _load_digits(root: str | None, download: bool) -> tuple[ImageSet, ImageSet]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixels are counts 0..16 of an 8x8 grid; scale to the 0..255 range of the other sets.
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    # The set has no official test split: a fixed stratified quarter, the same for every run.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.25, stratify=digits.target, random_state=0
    )
    classes = tuple(str(i) for i in range(10))
    full = ImageSet(images, labels, classes)
    return full.subset(torch.from_numpy(train_idx)), full.subset(torch.from_numpy(test_idx))


def _torchvision_loader(dataset_name: str):
    def load(root: str | None, download: bool) -> tuple[ImageSet, ImageSet]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, dataset_name)
        root = _require_root(root, dataset_name)
        _check_idx_files(Path(root) / dataset_name / "raw", dataset_name)
        try:
            splits = [cls(root=root, train=train, download=download) for train in (True, False)]
        except RuntimeError as err:
            said = str(err).strip().splitlines()[0].rstrip(":")
            if download:
                raise DataError(
                    f"{dataset_name} could not be downloaded into {Path(root) / dataset_name / 'raw'} "
                    f"(torchvision said: {said}; no network?). Copy {dataset_name}/raw there from a machine "
                    f"that has it, point data.root (or {DATA_ENV}) at a folder that holds it, or use data=digits, "
                    "which needs no files."
                ) from None
            raise DataError(
                f"{dataset_name} was not found under {Path(root) / dataset_name / 'raw'} "
                f"(torchvision said: {said}). Point data.root (or the {DATA_ENV} environment variable) "
                f"at a folder that holds {dataset_name}/raw, set data.download=true on a machine "
                "with network access, or use data=digits, which needs no files."
            ) from None
        classes = tuple(c.split(" - ")[-1].lower().replace("/", "_") for c in splits[0].classes)
        return tuple(ImageSet(s.data.unsqueeze(1).contiguous(), s.targets.long(), classes) for s in splits)

    return load


def _check_idx_files(raw: Path, dataset_name: str) -> None:
    """The IDX files of an MNIST-layout data set that are there are whole, or a DataError names
    the file and what is wrong (torchvision would fail on an assert, or call a cut-short file
    "not found"). Missing files are torchvision's to report (or download)."""
    fix = (
        f"replace it with an intact copy of {dataset_name}/raw/{{name}}, or delete it and set data.download=true "
        "on a machine with network access"
    )
    for split in ("train", "t10k"):
        counts = {}
        for kind, dims in (("images", 3), ("labels", 1)):
            path = raw / f"{split}-{kind}-idx{dims}-ubyte"
            if path.is_file():
                counts[kind] = _idx_count(path, dims, f"{dataset_name} {kind}", fix.format(name=path.name))
        if len(set(counts.values())) > 1:
            raise DataError(
                f"{raw}: {split}-images-idx3-ubyte holds {counts['images']} images but {split}-labels-idx1-ubyte holds "
                f"{counts['labels']} labels: the two files are not of the same data set"
            )


def _idx_count(path: Path, dims: int, what: str, fix: str) -> int:
    """The number of items in an IDX file of unsigned bytes with ``dims`` dimensions, from its
    header, after checking its magic number and that its size is what the header says."""
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
    size = path.stat().st_size
    magic = 0x0800 + dims  # two zero bytes, 0x08 for unsigned bytes, then the number of dimensions
    if not magic.to_bytes(4, "big").startswith(header[:4]):  # a file cut inside the magic number is truncated
        raise DataError(
            f"{path} is not an IDX file of {what}: such a file starts with the magic number 0x{magic:08x}, "
            f"this one with 0x{header[:4].hex()}: {fix}"
        )
    if len(header) < 4 + 4 * dims:
        raise DataError(f"{path} is truncated: expected at least {4 + 4 * dims} bytes of header, found {size}: {fix}")
    shape = [int.from_bytes(header[i : i + 4], "big") for i in range(4, len(header), 4)]
    expected = len(header) + math.prod(shape)
    if size != expected:
        state = "is truncated" if size < expected else f"has {size - expected} bytes too many"
        raise DataError(
            f"{path} {state}: expected {expected} bytes ({len(header)} of header, "
            f"{'x'.join(map(str, shape))} of data), found {size}: {fix}"
        )
    return shape[0]


def _require_root(root: str | None, what: str) -> str:
    root = root or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(
            f"{what} needs a data folder: set data.root=PATH or the {DATA_ENV} environment variable, "
            "or use data=digits, which needs no files."
        )
    return str(root)


def _load_folder(
    root: str | None, image_size: Sequence[int] | None, grayscale: bool, on_bad_file: str
) -> tuple[ImageSet, ImageSet]:
    """A folder of images, one subfolder per class; ``root/train`` and ``root/test`` if present."""
    root_path = Path(_require_root(root, "data=folder"))
    if not root_path.is_dir():
        raise DataError(f"image folder {root_path} does not exist: point data.root at a folder of class folders")
    has_split = (root_path / "train").is_dir() and (root_path / "test").is_dir()
    if has_split:
        return tuple(_read_image_folder(root_path / s, image_size, grayscale, on_bad_file) for s in ("train", "test"))
    full = _read_image_folder(root_path, image_size, grayscale, on_bad_file)
    train_idx, test_idx = _stratified_split(full.labels, 0.2, seed=0)  # fixed, the same for every run
    return full.subset(train_idx), full.subset(test_idx)


def _read_image_folder(folder: Path, image_size: Sequence[int] | None, grayscale: bool, on_bad_file: str) -> ImageSet:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2.functional import resize

    if on_bad_file not in ("error", "skip"):
        raise DataError(f"data.on_bad_file must be 'error' or 'skip', not {on_bad_file!r}")
    try:
        # Any extension: a non-image file is then a bad file to report, not one silently passed over.
        index = ImageFolder(str(folder), is_valid_file=lambda p: not Path(p).name.startswith("."))
    except FileNotFoundError as err:  # no class folders, or an empty one
        raise DataError(
            f"no images to read in {printable(folder)}: {printable(str(err).strip())} Put the images of each class "
            f"in a subfolder of their own ({printable(folder / 'CLASS' / 'IMAGE')}), and no empty class folder."
        ) from None
    images, labels, bad = [], [], []
    for path, label in index.samples:
        try:
            tensor = _read_image(path, "L" if grayscale else "RGB")
        except DataError as err:
            bad.append(str(err))
            continue
        if image_size is not None:
            tensor = resize(tensor, list(image_size), antialias=True)
        images.append(tensor)
        labels.append(label)
    if bad:
        listing = "\n  ".join(bad)
        if on_bad_file == "error":
            raise DataError(
                f"{len(bad)} unreadable file(s) in {printable(folder)}:\n  {listing}\n"
                "Remove them, or set data.on_bad_file=skip to skip them with a warning."
            )
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {printable(folder)}:\n  {listing}", stacklevel=2)
    if not images:
        raise DataError(f"no readable images in {printable(folder)}: expected one subfolder of images per class")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(
            f"images in {printable(folder)} differ in size ({sorted(shapes)[:3]}...): set data.image_size=[H,W]"
        )
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), tuple(index.classes))


def _read_image(path: str | Path, mode: str, data: bytes | None = None) -> Tensor:
    """An image file (or its ``data``, read already) as a (C, H, W) uint8 tensor in PIL ``mode``,
    or a DataError that names the file and says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with warnings.catch_warnings():
            # PIL refuses more than twice Image.MAX_IMAGE_PIXELS and only warns above it: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                return pil_to_tensor(im.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{printable(path)} (too large to decode safely: {err})") from None
    except UnidentifiedImageError:
        raise DataError(f"{printable(path)} (not an image file PIL can read)") from None
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for a damaged image
        raise DataError(f"{printable(path)} ({type(err).__name__}: {printable(err)})") from None


def _load_faces(root: str | None, image_size: Sequence[int] | None) -> tuple[ImageSet, ImageSet]:
    """Face images in the AT&T layout ``sNN/K.pgm`` (one folder per person), under ``root`` or ``root/att_faces``.

    The set has no official test split (the second ImageSet is empty): hold out people with
    ``split_by=class``, or test on the images a label budget leaves over with ``test_split=rest``.
    """
    from torchvision.transforms.v2.functional import resize

    folder = Path(_require_root(root, "data=faces"))
    if (folder / "att_faces").is_dir():
        folder = folder / "att_faces"
    people = sorted(
        (d for d in folder.glob("s*") if d.is_dir() and d.name[1:].isdigit()), key=lambda d: int(d.name[1:])
    )
    if not people:
        raise DataError(
            f"no face folders sNN/ under {folder}: point data.root at the folder of the AT&T faces "
            "(s1/1.pgm ... s40/10.pgm), or at its parent holding att_faces/"
        )
    images, labels = [], []
    for label, person in enumerate(people):
        files = sorted(person.glob("*.pgm"), key=lambda f: (len(f.stem), f.stem))  # 1, 2, ..., 10
        if not files:
            raise DataError(f"face folder {person} holds no .pgm images")
        for file in files:
            try:
                tensor = _read_image(file, "L")
            except DataError as err:
                raise DataError(f"unreadable face image {err}: replace or remove it") from None
            if image_size is not None:
                tensor = resize(tensor, list(image_size), antialias=True)
            images.append(tensor)
            labels.append(label)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"face images under {folder} differ in size ({sorted(shapes)[:3]}...): set data.image_size")
    classes = tuple(p.name for p in people)
    full = ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), classes)
    return full, full.subset(torch.arange(0))


SOURCES = {
    "digits": _load_digits,
    "fashion_mnist": _torchvision_loader("FashionMNIST"),
    "mnist": _torchvision_loader("MNIST"),
}


DATA_SETS = sorted([*SOURCES, "folder", "faces", "stream"])
"""Every name ``data.name`` may take (folder and faces read any root, with their own options; stream is
``pretrain.stream.StreamDataModule``'s)."""


@functools.lru_cache(maxsize=8)
def load_source(
    name: str,
    root: str | None = None,
    download: bool = False,
    image_size: tuple[int, ...] | None = None,
    grayscale: bool = True,
    on_bad_file: str = "error",
) -> tuple[ImageSet, ImageSet]:
    """The (train, test) splits of a data set, decoded once per process and then cached."""
    if name == "folder":
        return _load_folder(root, image_size, grayscale, on_bad_file)
    if name == "faces":
        return _load_faces(root, image_size)
    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r}: choose one of {DATA_SETS}")
    return SOURCES[name](root, download)


# --- selection -----------------------------------------------------------------------------


def resolve_classes(available: Sequence[str], wanted: Sequence[int | str]) -> list[int]:
    """Class indices for a list of class indices or names (names are matched case-insensitively)."""
    lookup = {name.lower(): i for i, name in enumerate(available)}
    out = []
    for c in wanted:
        if isinstance(c, bool) or not isinstance(c, int | str):
            raise DataError(f"class {c!r} must be an index or a name")
        if isinstance(c, int):
            if not 0 <= c < len(available):
                raise DataError(f"class index {c} is out of range: this data set has classes 0..{len(available) - 1}")
            out.append(c)
        elif c.lower() in lookup:
            out.append(lookup[c.lower()])
        else:
            raise DataError(f"unknown class {c!r}: this data set's classes are {list(available)}")
    if len(set(out)) != len(out):
        raise DataError(f"class list {list(wanted)} names a class twice")
    return out


def select_classes(train: ImageSet, test: ImageSet, keep: Sequence[int]) -> tuple[ImageSet, ImageSet]:
    """Keep only the given classes, relabelled 0..n-1 in the order given."""
    remap = torch.full((len(train.classes),), -1, dtype=torch.long)
    remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    classes = tuple(train.classes[i] for i in keep)

    def apply(s: ImageSet) -> ImageSet:
        new = remap[s.labels]
        mask = new >= 0
        return ImageSet(s.images[mask], new[mask], classes)

    return apply(train), apply(test)


def stratified_indices(labels: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Exactly ``count`` indices, spread as evenly as possible over the classes present."""
    classes = labels.unique()
    if count < len(classes):
        raise DataError(
            f"a budget of {count} images cannot cover the {len(classes)} classes: use at least {len(classes)}"
        )
    if count > len(labels):
        raise DataError(f"asked for {count} images but the chosen classes have only {len(labels)}")
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    quota = torch.full((len(classes),), count // len(classes))
    # The remainder goes to randomly chosen classes that still have images to give.
    for i in torch.randperm(len(classes), generator=generator)[: count % len(classes)]:
        quota[i] += 1
    short = [(classes[i].item(), len(idx), quota[i].item()) for i, idx in enumerate(per_class) if len(idx) < quota[i]]
    if short:
        raise DataError(f"classes {short} (class, available, needed) have too few images for a budget of {count}")
    chosen = torch.cat([idx[:q] for idx, q in zip(per_class, quota.tolist(), strict=True)])
    return chosen[torch.randperm(len(chosen), generator=generator)]


def _stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (rest, held_out) with about ``fraction`` of each class held out."""
    generator = torch.Generator().manual_seed(seed)
    held = stratified_indices(labels, max(len(labels.unique()), round(fraction * len(labels))), generator)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale of (N, C, H, W) uint8 images.

    From each channel's histogram of the 256 pixel values, exact: a tenth of the time of
    summing the pixels as int64 (the 60,000 Fashion-MNIST images: 28 ms instead of 363).
    """
    counts = torch.stack([torch.bincount(c.reshape(-1), minlength=256) for c in images.transpose(0, 1)]).double()
    values = torch.arange(256, dtype=torch.float64)
    n = counts.sum(1)
    mean = counts @ values / n
    var = counts @ (values * values) / n - mean**2
    return tuple((mean / 255).tolist()), tuple((var.clamp_min(1e-12).sqrt() / 255).tolist())


@contextlib.contextmanager
def _naming(key: str, value: object) -> Iterator[None]:
    """Prefix a DataError with the config value it is about."""
    try:
        yield
    except DataError as err:
        raise DataError(f"{key}={value}: {err}") from None


# --- batches -------------------------------------------------------------------------------


class EpochPermutation:
    """The order of one epoch: a permutation drawn from (seed, epoch), or the identity; with
    ``passes`` > 1, that many permutations one after another (a small set repeated, reshuffled).

    Under distributed training each rank takes every ``world_size``-th index of the same
    permutation; shuffled (training) shards are cut to equal length so that every rank
    takes the same number of steps. Lightning calls ``set_epoch`` at every epoch start,
    resumed runs included, as it does for a DataLoader's sampler.
    """

    def __init__(
        self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, passes: int = 1
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.passes = passes if shuffle else 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        if self.shuffle:
            order = torch.cat([self._permutation(p) for p in range(self.passes)])
            order = order[: len(order) - len(order) % self.world_size]
        else:
            order = torch.arange(self.size)
        return order[self.rank :: self.world_size]

    def _permutation(self, repeat: int) -> Tensor:
        key = [self.seed, self.epoch] + ([repeat] if repeat else [])  # the first pass: as without repeats
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return -(-self.size // self.world_size) if not self.shuffle else self.size * self.passes // self.world_size


class TensorBatches:
    """Whole batches gathered from in-memory tensors in the order of an ``EpochPermutation``.

    Shaped like a DataLoader where Lightning looks (``sampler``, ``batch_sampler``), so it
    reshuffles per epoch; there are no workers and no collation, one index per batch.

    Resumable mid-epoch through Lightning's stateful-loader protocol: a checkpoint records
    the epoch and how many of its batches were served (``state_dict``), and after
    ``load_state_dict`` the next iteration of that epoch skips them. The count is exact
    because the loader has a length, so Lightning does not prefetch from it (2.6:
    ``_PrefetchDataFetcher`` fetches ahead only for loaders without one): a batch is served
    when the training loop takes it.
    """

    batch_sampler = None

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, sampler: EpochPermutation) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.sampler = batch_size, sampler
        self.served = 0
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 1 or (rest == 1 and not self.sampler.shuffle))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        resume, self._resume = self._resume, None
        self.served = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        for batch in itertools.islice(self._batches(), self.served, None):
            self.served += 1
            yield batch

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Every batch of the current epoch. A generator: the order is drawn at the first batch,
        after Lightning's set_epoch."""
        order = self.sampler.order().to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if self.sampler.shuffle and len(index) == 1:
                break  # a training batch of one breaks batch norm; the image returns next epoch
            yield self.images[index], self.labels[index]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


class EpochPairs(EpochPermutation):
    """Balanced pairs for one epoch: each image anchors ``per_image`` pairs, and every other pair
    (in the order served, so every even-sized batch) is same-class, the rest different-class.

    The anchors' order and their partners are drawn afresh from (seed, epoch) when ``shuffle``;
    evaluation pairs (``shuffle=False``) are drawn from the seed alone, so they stay the same.
    """

    def __init__(
        self, labels: Tensor, per_image: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        labels = labels.cpu()
        self.check(labels, per_image)
        counts = torch.bincount(labels)
        super().__init__(len(labels) * per_image, True, seed, rank, world_size)
        self.draw_per_epoch = shuffle
        self.labels, self.counts = labels, counts
        self.by_class = torch.argsort(labels, stable=True)  # indices grouped by class
        self.starts = torch.cumsum(counts, 0) - counts  # where each class begins in by_class
        self.position = torch.empty_like(self.by_class)
        self.position[self.by_class] = torch.arange(len(labels))

    @staticmethod
    def check(labels: Tensor, per_image: int, split: str = "this split") -> None:
        """Pairs can be drawn from ``labels``, ``per_image`` per image, or a DataError says why not."""
        counts = torch.bincount(labels.cpu())
        present = counts[counts > 0]
        if len(present) < 2 or int(present.min()) < 2:
            raise DataError(
                f"pairs need at least 2 classes (identities) with at least 2 images each; {split} has "
                f"{len(present)} class(es) with {present.tolist()} images: adjust data.classes or data.val_size"
            )
        if per_image < 1:
            raise DataError(f"data.pairs_per_image must be at least 1, not {per_image}")

    def set_epoch(self, epoch: int) -> None:
        if self.draw_per_epoch:  # evaluation pairs stay those of epoch 0
            super().set_epoch(epoch)

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(anchor, partner, same)`` index tensors of this rank's pairs for the current epoch."""
        anchor = self.order() % len(self.labels)
        # A stream apart from the anchors' permutation (which is drawn from [seed, epoch]).
        seed = int(np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        same = torch.arange(len(anchor)) % 2 == 0
        cls = self.labels[anchor]
        count, start = self.counts[cls], self.starts[cls]
        u = torch.rand(len(anchor), generator=generator, dtype=torch.float64)
        # Same class: one of the class's other count-1 images (skip the anchor's own slot).
        k = start + (u * (count - 1)).long()
        k = k + (k >= self.position[anchor]).long()
        # Other class: one of the n-count images outside the class's block.
        r = (u * (len(self.labels) - count)).long()
        r = r + count * (r >= start).long()
        partner = self.by_class[torch.where(same, k, r)]
        return anchor, partner, same.long()


class PairBatches(TensorBatches):
    """Batches of image pairs, ``(images, same)``: ``images`` is ``(2B, C, H, W)`` with the B anchors
    first and their B partners after them, ``same`` is ``(B,)``, 1 where both show the same class."""

    sampler: EpochPairs

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        anchor, partner, same = (t.to(self.images.device) for t in self.sampler.pairs())
        for start in range(0, len(anchor), self.batch_size):
            a, b = anchor[start : start + self.batch_size], partner[start : start + self.batch_size]
            if self.sampler.shuffle and len(a) == 1:
                break
            yield self.images[torch.cat([a, b])], same[start : start + self.batch_size]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """0..255 images (uint8 or float) to ``(x / 255 - mean) / std`` per channel."""
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    return images.float() * scale - shift


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    # Made once per device: a tensor built from Python numbers on a GPU is a copy from host
    # memory, which waits for the GPU to finish its queued work, at every batch. Not inference
    # tensors (the first call may be under validation's inference mode), so training may use them.
    with torch.inference_mode(False):
        scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, -1, 1, 1)
    return scale, shift


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized images back to 0..1 pixels (clamped), for pictures."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def value_problems(
    image_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    val_size: float = 0,
    max_shift: int = 0,
    pairs_per_image: int = 1,
    min_batches_per_epoch: int | None = None,
    augment: dict[str, dict[str, Any]] | None = None,
    label_budget: int | None = None,
    labels_per_class: int | None = None,
) -> list[str]:
    """What is wrong with the values of these ``ImageDataModule`` arguments (of the right types),
    one line each: checked at construction, and with the rest of the config by ``validate_config``."""
    problems = []
    if image_size is not None and (len(image_size) != 2 or not all(side >= 1 for side in image_size)):
        problems.append(f"data.image_size={list(image_size)} must be [height, width], both at least 1 pixel")
    for key, values in (("mean", mean), ("std", std)):
        if values is not None and not all(math.isfinite(v) for v in values):
            problems.append(f"data.{key}={list(values)} must be finite numbers, one per channel")
        elif key == "std" and values is not None and not all(v > 0 for v in values):
            problems.append(f"data.std={list(values)} must be positive: each channel is divided by it (null: measured)")
    if not (0 <= val_size < 1 or (val_size >= 1 and float(val_size).is_integer())):
        problems.append(f"data.val_size={val_size} must be a whole count >= 0 or a fraction in [0, 1), e.g. 0.1")
    if max_shift < 0:
        problems.append(f"data.max_shift={max_shift} must be >= 0 pixels")
    if pairs_per_image < 1:
        problems.append(f"data.pairs_per_image={pairs_per_image} must be at least 1, e.g. data.pairs_per_image=1")
    if min_batches_per_epoch is not None and min_batches_per_epoch < 1:
        problems.append(f"data.min_batches_per_epoch={min_batches_per_epoch} must be at least 1, or null: one pass")
    if label_budget is not None and labels_per_class is not None:
        problems.append(
            f"data.label_budget={label_budget} and data.labels_per_class={labels_per_class} both say how many labeled "
            f"images to train on: keep one, e.g. data.label_budget=null data.labels_per_class={labels_per_class}"
        )
    return problems + augment_problems(augment)


class ImageDataModule(L.LightningDataModule):
    """Train/val/test splits of one data set, with class selection and a label budget.

    The training pool is the data set's training split restricted to the chosen classes.
    A validation set is drawn from it first: with ``split_by="image"``, ``val_size`` images
    (a count, or a fraction of the pool), stratified; with ``split_by="class"``, all images
    of ``val_size`` whole classes (a count, or a fraction of the classes), so that
    validation uses classes (people) never seen in training. The training set is the rest,
    or exactly ``label_budget`` images of it, stratified (or ``labels_per_class`` images of
    every class). All draws depend on ``seed`` only.
    The test set is the official test split of the chosen classes (``test_split="official"``)
    or, for data sets without one, the images the label budget leaves over (``"rest"``).

    ``batches="pairs"`` serves balanced same/different-class pairs instead of single images
    (``PairBatches``, drawn afresh each epoch), ``pairs_per_image`` per image and split.
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | None = None,
        download: bool = False,
        classes: Sequence[int | str] | None = None,
        exclude_classes: Sequence[int | str] | None = None,
        label_budget: int | None = None,
        labels_per_class: int | None = None,
        val_size: float = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hflip: bool = False,
        max_shift: int = 0,
        image_size: Sequence[int] | None = None,
        grayscale: bool = True,
        on_bad_file: str = "error",
        split_by: str = "image",
        test_split: str = "official",
        batches: str = "images",
        pairs_per_image: int = 1,
        min_batches_per_epoch: int | None = None,
        augment: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        for option, value, allowed in (
            ("split_by", split_by, ("image", "class")),
            ("test_split", test_split, ("official", "rest")),
            ("batches", batches, ("images", "pairs")),
        ):
            if value not in allowed:
                raise DataError(f"data.{option} must be one of {allowed}, not {value!r}")
        if problems := value_problems(
            image_size,
            mean,
            std,
            val_size,
            max_shift,
            pairs_per_image,
            min_batches_per_epoch,
            augment,
            label_budget,
            labels_per_class,
        ):
            raise DataError("; ".join(problems))
        self.split_by, self.test_split = split_by, test_split
        self.batches, self.pairs_per_image = batches, pairs_per_image
        self.min_batches_per_epoch = min_batches_per_epoch
        self.name, self.root, self.download = name, root, download
        self.classes, self.exclude_classes = classes, exclude_classes
        self.label_budget, self.labels_per_class, self.val_size = label_budget, labels_per_class, val_size
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.mean, self.std = mean, std
        self.max_shift = max_shift
        self.augment = Augment(augment, hflip, max_shift)  # training batches only, on their device
        self.image_size = tuple(image_size) if image_size is not None else None
        self.grayscale, self.on_bad_file = grayscale, on_bad_file
        self.train_set: ImageSet | None = None
        self.val_set: ImageSet | None = None
        self.test_set: ImageSet | None = None
        self.info: DataInfo | None = None

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images, before ``setup`` (the decoded set is cached for it)."""
        return tuple(self._source()[0].images.shape[1:])

    def _source(self) -> tuple[ImageSet, ImageSet]:
        return load_source(self.name, self.root, self.download, self.image_size, self.grayscale, self.on_bad_file)

    def setup(self, stage: str | None = None) -> None:
        if self.info is not None:
            return
        train, test = self._source()
        keep = self._kept_classes(train.classes)
        if keep is not None:
            train, test = select_classes(train, test, keep)
        generator = torch.Generator().manual_seed(self.seed)
        pool = torch.arange(len(train.labels))
        val = pool[:0]
        if self.split_by == "class":
            present = train.labels.unique()
            n_val = self._val_count(len(present), "classes")
            held = present[torch.randperm(len(present), generator=generator)[:n_val]]
            val = pool[torch.isin(train.labels, held)]
        elif n_val := self._val_count(len(pool), "images"):
            with _naming("data.val_size", self.val_size):
                val = stratified_indices(train.labels, n_val, generator)
        pool = pool[~torch.isin(pool, val)]
        rest = pool[:0]
        asked, budget = ("data.label_budget", self.label_budget), self.label_budget
        if self.labels_per_class is not None:  # a stratified draw of that many times the classes: that many of each
            asked = ("data.labels_per_class", self.labels_per_class)
            present, counts = train.labels[pool].unique(return_counts=True)
            if self.labels_per_class > counts.min():
                fewest = present[counts.argmin()]
                raise DataError(
                    f"data.labels_per_class={self.labels_per_class}: class {train.classes[fewest]!r} has only "
                    f"{counts.min()} training images: use at most {counts.min()}"
                )
            budget = self.labels_per_class * len(present)
        if budget is not None:
            with _naming(*asked):
                chosen = pool[stratified_indices(train.labels[pool], budget, generator)]
            rest, pool = pool[~torch.isin(pool, chosen)], chosen
        measured = train.images
        if self.test_split == "rest":
            test = train.subset(rest)
            measured = train.images[~torch.isin(torch.arange(len(train.labels)), rest)]  # normalize without them
        mean, std = channel_stats(measured) if self.mean is None or self.std is None else (None, None)
        mean, std = self.mean if self.mean is not None else mean, self.std if self.std is not None else std
        self.train_set, self.val_set, self.test_set = train.subset(pool), train.subset(val), test
        self._check_batches(tuple(train.images.shape[-2:]))
        self.info = DataInfo(
            name=self.name,
            input_shape=tuple(train.images.shape[1:]),
            classes=train.classes,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            num_train=len(pool),
        )
        if len(self.info.mean) != self.info.input_shape[0] or len(self.info.std) != self.info.input_shape[0]:
            raise DataError(
                f"normalization has {len(self.info.mean)} mean / {len(self.info.std)} std values but the "
                f"images have {self.info.input_shape[0]} channel(s)"
            )

    def describe(self) -> str:
        """What a run trains and is tested on, in a line (once ``setup`` has run)."""
        shape = "x".join(str(d) for d in self.info.input_shape)
        return (
            f"data {self.name}: {len(self.train_set.labels):,} training, {len(self.val_set.labels):,} validation "
            f"and {len(self.test_set.labels):,} test images of {shape} (channels x height x width), "
            f"{self.info.num_classes} classes"
            + (" (resized and converted as data.image_size and data.grayscale say)" if self.image_size else "")
        )

    def _check_batches(self, image_side: tuple[int, int]) -> None:
        """The values that only the data can judge, judged before a trainer exists (whose loggers write files
        before it asks for the loaders): the shift against the image size, and whether each split makes pairs."""
        if self.max_shift >= min(image_side):
            raise DataError(
                f"data.max_shift={self.max_shift} would shift images of {image_side[0]}x{image_side[1]} pixels out "
                f"of view: use less than {min(image_side)}"
            )
        if self.batches == "pairs":
            EpochPairs.check(self.train_set.labels, self.pairs_per_image, "the training split")
            if len(self.val_set.labels):
                EpochPairs.check(self.val_set.labels, self.pairs_per_image, "the validation split")

    def _kept_classes(self, available: tuple[str, ...]) -> list[int] | None:
        if self.classes is None and not self.exclude_classes:
            return None
        with _naming("data.classes", self.classes):
            keep = resolve_classes(available, self.classes) if self.classes is not None else range(len(available))
        with _naming("data.exclude_classes", self.exclude_classes):
            drop = set(resolve_classes(available, self.exclude_classes or []))
        keep = [c for c in keep if c not in drop]
        if not keep:
            raise DataError(
                f"the class selection (classes={self.classes}, exclude_classes={self.exclude_classes}) is empty"
            )
        return keep

    def _val_count(self, pool_size: int, unit: str) -> int:
        count = round(self.val_size * pool_size) if 0 < self.val_size < 1 else int(self.val_size)
        if count >= pool_size:
            raise DataError(f"data.val_size={self.val_size} leaves no training {unit} out of {pool_size}")
        return count

    # Batches live on the training device when it is an accelerator: the whole set is a few
    # hundred MB of uint8 at most, and indexing it there skips a host-to-device copy per step.
    def _loader(self, split: ImageSet, batch_size: int, shuffle: bool) -> TensorBatches:
        rank, world, device = 0, 1, torch.device("cpu")
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            device = self.trainer.strategy.root_device
        images, labels = split.images, split.labels
        if self.batches == "pairs":
            pairs = EpochPairs(labels, self.pairs_per_image, shuffle, self.seed, rank, world)
            return PairBatches(images.to(device), labels, batch_size, pairs)
        if device.type != "cpu":
            images, labels = images.to(device), labels.to(device)
        passes = 1
        if shuffle and self.min_batches_per_epoch:  # enough steps an epoch from few labels, whatever the budget
            passes = max(1, math.ceil(self.min_batches_per_epoch * batch_size * world / len(labels)))
        order = EpochPermutation(len(labels), shuffle, self.seed, rank, world, passes)
        return TensorBatches(images, labels, batch_size, order)

    def train_dataloader(self) -> TensorBatches:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorBatches | list:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False) if len(self.val_set.labels) else []

    def test_dataloader(self) -> TensorBatches:
        if not len(self.test_set.labels):
            how = (
                "set data.label_budget, so that the images it leaves over form the test set"
                if self.test_split == "rest"
                else "this data set has no official test split: set data.test_split=rest and data.label_budget"
            )
            raise DataError(f"data={self.name} has no test images: {how}")
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255 float) images to normalized float, on whatever device they are."""
        return normalize(images, self.info.mean, self.info.std)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        if self.trainer is not None and self.trainer.training and self.augment.active:
            images = self.augment(images)
        return self.normalize(images), labels
