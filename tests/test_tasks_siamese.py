"""Siamese pairs and the faces data: balanced pairs, fresh each epoch, people split apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.batching import EpochPairs, PairBatches
from pretrain.data.images import DataError
from pretrain.data.module import ImageDataModule
from pretrain.data.sources import load_source


def fake_faces(root, people: int = 6, per_person: int = 5, size=(14, 12)):
    """The AT&T layout, sNN/K.pgm, with each person's images a distinct grey level."""
    for person in range(1, people + 1):
        folder = root / f"s{person}"
        folder.mkdir(parents=True)
        for k in range(1, per_person + 1):
            pixels = np.full(size, 20 * person + k, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{k}.pgm")
    return root


def test_pairs_are_balanced_correct_and_fresh_each_epoch():
    labels = torch.arange(7).repeat_interleave(torch.tensor([2, 3, 5, 9, 4, 2, 6]))
    pairs = EpochPairs(labels, per_image=3, shuffle=True, seed=1)
    anchor, partner, same = pairs.pairs()
    assert len(anchor) == 3 * len(labels)
    assert torch.equal(torch.bincount(anchor, minlength=len(labels)), torch.full((len(labels),), 3))
    assert torch.equal(labels[anchor] == labels[partner], same.bool())
    assert (anchor != partner).all()
    for start in range(0, len(same) - 15, 16):  # every batch of 16 is half same, half different
        assert same[start : start + 16].sum() == 8
    pairs.set_epoch(1)
    assert not torch.equal(pairs.pairs()[1], partner)
    pairs.set_epoch(0)
    assert torch.equal(pairs.pairs()[1], partner)  # from (seed, epoch): reproducible


def test_evaluation_pairs_stay_the_same():
    labels = torch.arange(4).repeat_interleave(5)
    pairs = EpochPairs(labels, per_image=2, shuffle=False, seed=3)
    first = pairs.pairs()
    pairs.set_epoch(5)
    assert all(torch.equal(a, b) for a, b in zip(first, pairs.pairs(), strict=True))


def test_pair_batches_put_anchors_first_and_partners_after():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    labels = torch.arange(4).repeat_interleave(5)
    batches = PairBatches(images, labels, 8, EpochPairs(labels, 2, shuffle=True, seed=0))
    seen = 0
    for batch, same in batches:
        a, b = batch[: len(same)].flatten().long(), batch[len(same) :].flatten().long()
        assert torch.equal(labels[a] == labels[b], same.bool())
        seen += len(same)
    assert seen == 40 and len(batches) == 5


def test_pairs_need_two_images_per_class():
    with pytest.raises(DataError, match="at least 2 images"):
        EpochPairs(torch.tensor([0, 0, 1]), 1, shuffle=True)


def test_faces_read_from_any_root_in_numeric_order(tmp_path):
    fake_faces(tmp_path / "anywhere" / "att_faces", people=11, per_person=10)
    train, test = load_source("faces", str(tmp_path / "anywhere"))  # the parent of att_faces
    assert train.classes[:3] == ("s1", "s2", "s3") and train.classes[-1] == "s11"
    assert train.images.shape == (110, 1, 14, 12) and len(test.labels) == 0
    # s1/10.pgm comes after s1/9.pgm; every image of a person carries that person's label
    assert train.images[:10, 0, 0, 0].tolist() == [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]
    assert torch.equal(train.labels, torch.arange(11).repeat_interleave(10))
    same, _ = load_source("faces", str(tmp_path / "anywhere" / "att_faces"), image_size=(8, 6))
    assert same.images.shape == (110, 1, 8, 6)
    with pytest.raises(DataError, match="no face folders"):
        load_source("faces", str(tmp_path))


def test_validation_people_are_never_training_people(tmp_path):
    root = fake_faces(tmp_path / "faces", people=12, per_person=5)
    dm = ImageDataModule(
        "faces", root=str(root), split_by="class", val_size=3, exclude_classes=["s12"], batches="pairs", seed=4
    )
    dm.setup("fit")
    train, val = set(dm.train_set.labels.tolist()), set(dm.val_set.labels.tolist())
    assert len(train) == 8 and len(val) == 3 and not train & val and 11 not in train | val  # s12 is label 11
    assert len(dm.val_set.labels) == 15
    for loader, people in ((dm.train_dataloader(), train), (dm.val_dataloader(), val)):
        batch, same = next(iter(loader))
        assert batch.shape[0] == 2 * len(same)
        # Grey level 20 * person + k identifies the person: every pair is made of that split's people.
        person = (batch.flatten(1)[:, 0].long() - 1) // 20 - 1
        assert set(person.tolist()) <= people


def test_a_label_budget_leaves_the_rest_of_each_person_for_testing(tmp_path):
    root = fake_faces(tmp_path / "faces", people=12, per_person=10)
    dm = ImageDataModule(
        "faces", root=str(root), classes=list(range(2, 12)), label_budget=20, val_size=0, test_split="rest", seed=0
    )
    dm.setup("fit")
    assert torch.equal(torch.bincount(dm.train_set.labels), torch.full((10,), 2))
    assert torch.equal(torch.bincount(dm.test_set.labels), torch.full((10,), 8))
    train_pixels = {int(v) for v in dm.train_set.images[:, 0, 0, 0]}
    assert not train_pixels & {int(v) for v in dm.test_set.images[:, 0, 0, 0]}
    other = ImageDataModule(
        "faces", root=str(root), classes=list(range(2, 12)), label_budget=20, test_split="rest", seed=1
    )
    other.setup("fit")
    assert {int(v) for v in other.train_set.images[:, 0, 0, 0]} != train_pixels  # drawn by seed
    no_budget = ImageDataModule("faces", root=str(root), test_split="rest")
    no_budget.setup("fit")
    with pytest.raises(DataError, match="set data.label_budget"):
        no_budget.test_dataloader()
