"""Whole batches by one indexing operation on in-memory tensors: epochs of images, or of same/different pairs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from pretrain.data.images import DataError


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
