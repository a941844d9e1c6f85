"""Data sets in memory: class selection, label budgets, splits, batches and clear errors."""

from __future__ import annotations

import pytest
import torch

from pretrain.data import (
    DataError,
    EpochPermutation,
    ImageDataModule,
    TensorBatches,
    augment_batch,
    channel_stats,
    load_source,
    normalize,
)


def setup(**kw) -> ImageDataModule:
    dm = ImageDataModule(**{"name": "digits", "val_size": 0, **kw})
    dm.setup("fit")
    return dm


def test_digits_needs_no_files():
    dm = setup()
    assert dm.info.input_shape == (1, 8, 8) and dm.info.num_classes == 10
    assert dm.train_set.images.dtype == torch.uint8
    assert len(dm.train_set.labels) + len(dm.test_set.labels) == 1797


def test_classes_by_name_and_index_are_relabelled_in_order():
    dm = setup(classes=["7", 3])
    assert dm.info.classes == ("7", "3")
    assert set(dm.train_set.labels.tolist()) == {0, 1} and set(dm.test_set.labels.tolist()) == {0, 1}
    full_train, _ = load_source("digits")
    assert (dm.train_set.labels == 0).sum() == (full_train.labels == 7).sum()


def test_exclude_classes():
    dm = setup(exclude_classes=[0, "9"])
    assert dm.info.classes == tuple(str(i) for i in range(1, 9))


@pytest.mark.parametrize("budget", [10, 37, 200])
def test_label_budget_is_exact_stratified_and_seeded(budget):
    dm = setup(label_budget=budget, seed=3)
    counts = torch.bincount(dm.train_set.labels, minlength=10)
    assert counts.sum() == budget and counts.max() - counts.min() <= 1
    again = setup(label_budget=budget, seed=3)
    other = setup(label_budget=budget, seed=4)
    assert torch.equal(dm.train_set.images, again.train_set.images)
    assert not torch.equal(dm.train_set.images, other.train_set.images)


def test_validation_is_disjoint_from_training():
    dm = setup(val_size=0.2, label_budget=50)
    train = {tuple(x.flatten().tolist()) for x in dm.train_set.images}
    val = {tuple(x.flatten().tolist()) for x in dm.val_set.images}
    assert len(dm.val_set.labels) == round(0.2 * 1347) and len(dm.train_set.labels) == 50
    assert not train & val


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"label_budget": 5}, "cannot cover the 10 classes"),
        ({"label_budget": 100000}, "only 1347"),
        ({"classes": ["cat"]}, "unknown class 'cat'"),
        ({"classes": [12]}, "out of range"),
        ({"classes": [1], "exclude_classes": [1]}, "is empty"),
        ({"name": "imagenet"}, "unknown data set 'imagenet'"),
        ({"val_size": 1347}, "leaves no training images"),
    ],
)
def test_bad_selections_say_what_is_wrong(kw, message):
    with pytest.raises(DataError, match=message):
        setup(**kw)


def test_missing_dataset_names_the_path_and_the_ways_out(tmp_path):
    with pytest.raises(DataError) as err:
        setup(name="fashion_mnist", root=str(tmp_path))
    text = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in text and "data.root" in text and "data=digits" in text


def test_folder_data_and_unreadable_files(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("L", (12, 10), color=40 * i).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="(?s)notes.txt.*data.on_bad_file=skip"):
        setup(name="folder", root=str(tmp_path), image_size=(8, 8), val_size=0)
    load_source.cache_clear()
    with pytest.warns(UserWarning, match="notes.txt"):
        dm = setup(name="folder", root=str(tmp_path), image_size=(8, 8), on_bad_file="skip")
    assert dm.info.classes == ("cat", "dog") and dm.info.input_shape == (1, 8, 8)
    assert len(dm.train_set.labels) + len(dm.test_set.labels) == 10


def test_epochs_reshuffle_deterministically():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    sampler = EpochPermutation(10, shuffle=True, seed=1)
    batches = TensorBatches(x, torch.arange(10), 4, sampler)
    first = torch.cat([b[1] for b in batches])
    sampler.set_epoch(1)
    second = torch.cat([b[1] for b in batches])
    sampler.set_epoch(0)
    assert torch.equal(first, torch.cat([b[1] for b in batches]))
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(10))
    assert len(batches) == 3


def test_a_trailing_batch_of_one_is_dropped_in_training_only():
    x = torch.zeros(9, 1, 2, 2, dtype=torch.uint8)
    train = TensorBatches(x, torch.arange(9), 4, EpochPermutation(9, shuffle=True))
    test = TensorBatches(x, torch.arange(9), 4, EpochPermutation(9, shuffle=False))
    assert [len(b[1]) for b in train] == [4, 4] and len(train) == 2
    assert [len(b[1]) for b in test] == [4, 4, 1] and len(test) == 3


def test_distributed_shards_are_disjoint_and_even():
    shards = [EpochPermutation(11, shuffle=True, seed=0, rank=r, world_size=2).order() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0].tolist()) & set(shards[1].tolist())
    evals = [EpochPermutation(11, shuffle=False, rank=r, world_size=2).order() for r in (0, 1)]
    assert sorted(torch.cat(evals).tolist()) == list(range(11))  # evaluation sees every image once


def test_normalization_matches_measured_stats():
    dm = setup()
    x = dm.normalize(dm.train_set.images)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    mean, std = channel_stats(dm.train_set.images)
    ref = (dm.train_set.images.double() / 255 - mean[0]) / std[0]
    assert torch.allclose(normalize(dm.train_set.images, mean, std).double(), ref, atol=1e-5)


def test_channel_stats_are_each_channels_mean_and_population_std():
    images = torch.randint(0, 256, (50, 3, 7, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 2] //= 4  # channels that differ
    x = images.double().transpose(0, 1).reshape(3, -1) / 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx(x.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(1, correction=0).tolist(), abs=1e-12)


def test_augmentation_shifts_and_flips_per_image():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 2, 1] = 255
    out = augment_batch(x, hflip=True, max_shift=2)
    positions = {tuple(torch.nonzero(img[0]).flatten().tolist()) for img in out}
    assert len(positions) > 5  # images moved independently
    assert out.sum(dim=(1, 2, 3)).max() <= 255
