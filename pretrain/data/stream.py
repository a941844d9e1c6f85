"""Collections prepared by ``python -m pretrain.prepare``, streamed from their litdata shards.

``data=stream data.root=OUT`` (a local folder, or whatever litdata reads, such as ``s3://...``)
serves the same batches as the in-memory data: ``(B, C, H, W)`` uint8 images and labels, which go
through the same ``on_after_batch_transfer`` (augmentation and normalization on the device), so
no task needs to know where its images came from.

Selection works on the index alone: the classes, the validation split and the label budget are
drawn by ``ImageDataModule.setup`` from the index's labels, exactly as for in-memory data, and a
split is then the litdata ``StreamingDataset`` restricted to those positions (``subset``).
DataLoader workers decode the images (``Decode``); litdata shuffles per epoch from the seed,
gives each DDP rank a disjoint share, and its ``StreamingDataLoader`` is resumable mid-epoch
through the checkpoint (Lightning saves the state of loaders that have ``state_dict``).

Pair batches (``task=siamese``) and the online k-NN evaluation need images picked at random, not
in stream order: they read them one by one by position (fine on a local disk, slow from object
storage), decoded in the training process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch import Tensor

from pretrain.data.batching import EpochPairs, PairBatches
from pretrain.data.images import DataError, ImageSet
from pretrain.data.module import ImageDataModule
from pretrain.data.selection import stratified_split
from pretrain.internals import download_with_litdata
from pretrain.run.text import printable

# litdata logs its cache budget and read mode at INFO, in every worker: not news for our users.
logging.getLogger("litdata").setLevel(logging.WARNING)
# Lightning's caution about an IterableDataset with a length: litdata gives each worker a share of its own.
warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined")
# A selection is a subset made of one litdata "chunk" per run of consecutive images (a few images each, once a
# random validation split is out); litdata would ask the kernel to read ahead the whole shard file at every one.
os.environ.setdefault("LITDATA_POSIX_WILLNEED", "0")
# Each image is deserialized alone (litdata's default for these items: 256 together, mostly thrown away when a
# selection's runs are short); the item fields are opaque bytes to litdata, so it cannot tell they are images.
PER_ITEM = 0

MARKER = "pretext.json"  # written last by a preparation: its presence means the folder is complete
PARTIAL = ".pretext-partial"  # written first, removed last
INDEX = "pretext-index.npz"  # per split: labels, heights, widths, good, paths in the shards' order


def decode_image(data: bytes, mode: str | None = None, size: Sequence[int] | None = None, name: str = "") -> Tensor:
    """Encoded image bytes as a (C, H, W) uint8 tensor in PIL ``mode`` (None: gray stays gray, else RGB),
    resized to ``size`` [H, W] if it differs."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, resize

    tensor = _decoded_by_torchvision(data, mode)
    if tensor is None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                mode = mode or ("L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB")
                tensor = pil_to_tensor(im.convert(mode))
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(
                f"the stored image of {printable(name)} cannot be decoded ({type(err).__name__}: {printable(err)}): "
                "the shards are damaged; prepare the collection again"
            ) from None
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        tensor = resize(tensor, list(size), antialias=True)
    return tensor


def _decoded_by_torchvision(data: bytes, mode: str | None) -> Tensor | None:
    """8-bit gray or colour JPEG/PNG decoded by torchvision.io (3x faster than PIL here), to PIL's exact pixels;
    None for the rest (colour to gray, alpha, CMYK, 16-bit, damaged data), which PIL decodes."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as decode

    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[25:26] not in (b"\x00", b"\x02"):
        return None  # a PNG with a palette (torchvision gives its indices) or an alpha channel
    try:
        tensor = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    channels = {"L": 1, "RGB": 3}.get(mode, 1 if tensor.shape[0] == 1 else 3)
    if tensor.dtype != torch.uint8 or tensor.shape[0] not in (1, channels):
        return None
    return tensor.expand(channels, -1, -1).contiguous() if channels != tensor.shape[0] else tensor


class Decode:
    """Stored item -> (uint8 image, label as selected), run in DataLoader workers; picklable (spawn)."""

    def __init__(self, mode: str, size: tuple[int, int], remap: Tensor) -> None:
        self.mode, self.size, self.remap = mode, size, remap

    def __call__(self, item: dict) -> tuple[Tensor, int]:
        label = item["label"]
        return decode_image(item["image"], self.mode, self.size, bytes(item["path"]).decode()), (
            int(self.remap[label]) if label >= 0 else label
        )


@dataclass(frozen=True)
class Prepared:
    """A complete preparation: what ``pretext.json`` says, and the index of each split."""

    root: str
    meta: dict
    index: dict[str, dict[str, np.ndarray]]

    def split_dir(self, split: str) -> str:
        return f"{self.root.rstrip('/')}/{split}"


def _local(root: str, name: str, cache: Path) -> Path:
    """``root/name`` on this machine: itself for a local folder, a downloaded copy for object storage."""
    if "://" not in root:
        return Path(root) / name
    local = cache / name
    local.parent.mkdir(parents=True, exist_ok=True)
    remote = f"{root.rstrip('/')}/{name}"
    try:
        download_with_litdata(remote, local)
    except Exception as err:  # noqa: BLE001 - whatever the storage client says, in one line
        raise DataError(f"cannot read {printable(remote)}: {type(err).__name__}: {printable(err)}") from None
    return local


@functools.lru_cache(maxsize=4)
def open_prepared(root: str) -> Prepared:
    """The preparation at ``root``, checked: complete, its index whole, its shard files all there and of the
    size litdata's own index gives them; or a DataError that names the file and says what to do."""
    again = f"prepare it again: python -m pretrain.prepare SOURCE {printable(root)}"
    remote = "://" in root
    cache = Path(tempfile.mkdtemp(prefix="pretext-index-")) if remote else Path(root)
    marker = _local(root, MARKER, cache)
    if not remote and not Path(root).is_dir():
        raise DataError(
            f"{printable(root)} does not exist: point data.root at a folder made by python -m pretrain.prepare"
        )
    if not remote and not marker.is_file():
        if (Path(root) / PARTIAL).is_file():
            raise DataError(f"{printable(root)} is a half-finished preparation (no {MARKER}): {again}")
        raise DataError(f"{printable(root)} is not a prepared collection (no {MARKER}): make one with {again[10:]}")
    try:
        meta = json.loads(marker.read_text())
        splits = dict(meta["splits"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{printable(marker)} is damaged ({type(err).__name__}): {again}") from None
    index = {}
    for split in splits:
        path = _local(root, f"{split}/{INDEX}", cache)
        try:
            with np.load(path) as npz:
                index[split] = {k: npz[k] for k in ("labels", "heights", "widths", "good", "paths")}
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{printable(path)} is damaged ({type(err).__name__}): {again}") from None
        if not remote:
            _check_shards(Path(root) / split, again)
    return Prepared(root, meta, index)


def _check_shards(split_dir: Path, again: str) -> None:
    """Every shard file litdata's ``index.json`` lists is there and has its recorded size."""
    listing = split_dir / "index.json"
    try:
        chunks = json.loads(listing.read_text())["chunks"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{printable(listing)} is missing or damaged ({type(err).__name__}): {again}") from None
    for chunk in chunks:
        shard = split_dir / chunk["filename"]
        size = shard.stat().st_size if shard.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "it is missing" if size is None else f"it has {size} bytes, not {chunk['chunk_bytes']}"
            raise DataError(f"shard {printable(shard)} is damaged ({found}): {again}")


@dataclass(frozen=True)
class StoredImages:
    """Images of a prepared split, by position in its shards, read only when asked: stands in for the
    ``(N, C, H, W)`` uint8 tensor of an in-memory ``ImageSet`` (indexing, ``shape``, ``split``)."""

    split_dir: str
    positions: Tensor  # (N,) int64
    mode: str
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.positions), 1 if self.mode == "L" else 3, *self.size)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where they are decoded

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: Tensor) -> StoredImages:
        return StoredImages(self.split_dir, self.positions[index], self.mode, self.size)

    def decode(self) -> Tensor:
        dataset = _random_access(self.split_dir)
        images = [dataset[int(p)] for p in self.positions]
        return torch.stack(
            [decode_image(it["image"], self.mode, self.size, bytes(it["path"]).decode()) for it in images]
        ).reshape(self.shape)

    def split(self, size: int) -> Iterator[Tensor]:
        for start in range(0, len(self), size):
            yield self[torch.arange(start, min(start + size, len(self)))].decode()


@functools.lru_cache(maxsize=8)
def _random_access(split_dir: str):
    with quiet_litdata():
        return StreamingDataset(split_dir, batch_decode=PER_ITEM)


@contextlib.contextmanager
def quiet_litdata() -> Iterator[None]:
    """litdata's chatter (an invitation to create an account, worker set-up lines) goes to stdout, its
    progress bar to stderr: keep the bar, drop the chatter. The one place its prints are filtered."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="litdata")
        yield


class StoredPairBatches(PairBatches):
    """``PairBatches`` whose images are read from the shards, a batch at a time."""

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, same in super()._batches():
            yield images.decode(), same


class StreamDataModule(ImageDataModule):
    """``ImageDataModule`` over a prepared collection (see the module's docstring).

    ``image_size``: [H, W] every image is decoded to (null: the images' own, if they all share one);
    ``grayscale``: decode to one channel or three (null: as prepared); ``num_workers``: DataLoader
    workers decoding; ``mean``/``std`` null: those measured at preparation. Without a test split of its
    own, a fixed fifth of the images (stratified, the same for every run) is the official test split.
    """

    def __init__(self, *args, num_workers: int = 2, grayscale: bool | None = None, **kwargs) -> None:
        super().__init__(*args, grayscale=grayscale, **kwargs)
        self.num_workers = num_workers

    def _source(self) -> tuple[ImageSet, ImageSet]:
        if not self.root:
            raise DataError("data=stream needs data.root: the folder (or s3://... URL) python -m pretrain.prepare made")
        return _sets(str(self.root), self.image_size, self.grayscale)

    def setup(self, stage: str | None = None) -> None:
        if self.info is None and (self.mean is None or self.std is None):
            stats = open_prepared(str(self.root)).meta["stats"]
            measured = stats["gray" if self._source()[0].images.mode == "L" else "rgb"]
            self.mean = self.mean if self.mean is not None else measured["mean"]
            self.std = self.std if self.std is not None else measured["std"]
        super().setup(stage)

    def _loader(self, split: ImageSet, batch_size: int, shuffle: bool):
        images: StoredImages = split.images
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if self.batches == "pairs":
            pairs = EpochPairs(split.labels, self.pairs_per_image, shuffle, self.seed, rank, world)
            return StoredPairBatches(images, split.labels, batch_size, pairs)
        prepared = open_prepared(str(self.root))
        stored = torch.from_numpy(prepared.index[Path(images.split_dir).name]["labels"])[images.positions]
        remap = torch.full((max(len(prepared.meta["classes"]), 1),), -1, dtype=torch.long)
        remap[stored[stored >= 0]] = split.labels[stored >= 0]
        with quiet_litdata():
            dataset = StreamingDataset(
                images.split_dir,
                shuffle=shuffle,
                seed=self.seed,
                drop_last=shuffle and world > 1,  # training: equal steps on every rank; evaluation: every image
                transform=Decode(images.mode, images.size, remap),
                batch_decode=PER_ITEM,
            )
            positions = images.positions.sort().values
            if len(positions) != len(dataset) or not torch.equal(positions, torch.arange(len(dataset))):
                dataset = dataset.subset(positions.tolist())
            # A generator of its own: a DataLoader draws its workers' seed at every epoch, from the global random
            # stream otherwise, which then differs between a run and its resumed copy (augmentation draws from it).
            generator = torch.Generator().manual_seed(self.seed)
            loader = TrainingLoader if shuffle else StreamingDataLoader
            return loader(dataset, batch_size=batch_size, num_workers=self.num_workers, generator=generator)


class TrainingLoader(StreamingDataLoader):
    """litdata's loader, less a last batch of one image (batch norm cannot train on it; the in-memory batches
    drop it too): the image comes back in another epoch's shuffle."""

    def __iter__(self) -> Iterator:
        yield from (batch for batch in super().__iter__() if len(batch[1]) > 1)

    def __len__(self) -> int:
        return super().__len__() - (self.dataset.get_len(self.num_workers, self.batch_size) % self.batch_size == 1)


@functools.lru_cache(maxsize=4)
def _sets(root: str, image_size: tuple[int, int] | None, grayscale: bool | None) -> tuple[ImageSet, ImageSet]:
    """The (train, test) sets of a preparation as ``ImageSet``s of ``StoredImages``: labels in memory, images not."""
    prepared = open_prepared(root)
    classes = tuple(prepared.meta["classes"])
    mode = {True: "L", False: "RGB", None: "L" if prepared.meta["channels"] == 1 else "RGB"}[grayscale]
    train_index = prepared.index["train"]
    good = np.flatnonzero(train_index["good"])
    sizes = {(int(h), int(w)) for h, w in zip(train_index["heights"][good], train_index["widths"][good], strict=True)}
    if image_size is None and len(sizes) > 1:
        raise DataError(
            f"the images of {printable(root)} differ in size ({sorted(sizes)[:3]}...): set data.image_size=[H,W], "
            "the size every image is decoded to"
        )
    size = tuple(image_size) if image_size is not None else sizes.pop()

    def stored(split: str) -> ImageSet:
        index = prepared.index[split]
        keep = torch.from_numpy(np.flatnonzero(index["good"]))
        labels = torch.from_numpy(index["labels"])[keep]
        return ImageSet(StoredImages(prepared.split_dir(split), keep, mode, size), labels, classes)

    train = stored("train")
    if "test" in prepared.index:
        return train, stored("test")
    if not classes:  # unlabeled: no test split
        return train, train.subset(torch.arange(0))
    with warnings.catch_warnings():
        rest, test = stratified_split(train.labels, 0.2, seed=0)  # fixed, as for an image folder in memory
    return train.subset(rest), train.subset(test)
