"""Which images a run uses: classes by index or name, stratified draws of a label budget or a split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pretrain.data.images import DataError, ImageSet


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


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (rest, held_out) with about ``fraction`` of each class held out."""
    generator = torch.Generator().manual_seed(seed)
    held = stratified_indices(labels, max(len(labels.unique()), round(fraction * len(labels))), generator)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held
