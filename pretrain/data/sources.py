"""Where images come from: the built-in sets, torchvision-layout files, folders and the faces set,
each read into (train, test) uint8 tensors."""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pretrain.data.images import DataError, ImageSet
from pretrain.data.selection import stratified_split
from pretrain.run.text import printable

DATA_ENV = "PRETEXT_DATA"
"""Environment variable naming the folder that holds torchvision-layout data sets."""


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
    train_idx, test_idx = stratified_split(full.labels, 0.2, seed=0)  # fixed, the same for every run
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
            tensor = read_image(path, "L" if grayscale else "RGB")
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


def read_image(path: str | Path, mode: str, data: bytes | None = None) -> Tensor:
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


def load_faces(root: str | None, image_size: Sequence[int] | None) -> tuple[ImageSet, ImageSet]:
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
                tensor = read_image(file, "L")
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
``pretrain.data.stream.StreamDataModule``'s)."""


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
        return load_faces(root, image_size)
    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r}: choose one of {DATA_SETS}")
    return SOURCES[name](root, download)
