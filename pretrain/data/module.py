"""Image data sets held in memory as uint8 tensors and served as whole batches.

A data set is decoded once per process into ``(N, C, H, W)`` uint8 tensors. A batch is
one indexing operation on those tensors; it is converted to float, augmented and
normalized on the device it trains on (``on_after_batch_transfer``), so the hot path has
no per-sample Python work and no PIL.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

from pretrain.data.augment import Augment, augment_problems
from pretrain.data.batching import EpochPairs, EpochPermutation, PairBatches, TensorBatches
from pretrain.data.images import DataError, ImageSet
from pretrain.data.selection import resolve_classes, select_classes, stratified_indices
from pretrain.data.sources import load_source


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
