"""Data sets in memory: class selection, label budgets, splits, batches and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.data.augment import Augment
from pretrain.data.batching import EpochPermutation, TensorBatches
from pretrain.data.images import DataError
from pretrain.data.module import ImageDataModule, channel_stats, normalize
from pretrain.data.sources import load_source


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


def test_a_small_set_is_passed_over_again_reshuffled():
    one = EpochPermutation(10, shuffle=True, seed=1).order()
    three = EpochPermutation(10, shuffle=True, seed=1, passes=3)
    order = three.order()
    assert len(three) == 30 and torch.equal(order[:10], one)  # the first pass: as without repeats
    assert torch.bincount(order).tolist() == [3] * 10 and not torch.equal(order[:10], order[10:20])
    shards = [EpochPermutation(10, shuffle=True, seed=1, rank=r, world_size=2, passes=3).order() for r in (0, 1)]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.sort(order).values)  # ranks share the passes
    assert len(EpochPermutation(10, shuffle=False, passes=3)) == 10  # evaluation: one pass


def test_min_batches_per_epoch_sets_the_steps_of_an_epoch():
    dm = ImageDataModule("digits", label_budget=20, val_size=0, batch_size=8, seed=0, min_batches_per_epoch=10)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 10  # ceil(10 * 8 / 20) = 4 passes: 80 images
    assert torch.bincount(torch.cat([b[1] for b in batches]), minlength=10).tolist() == [8] * 10
    assert len(dm.test_dataloader()) == len(setup(label_budget=20, val_size=0).test_dataloader())
    with pytest.raises(DataError, match="min_batches_per_epoch=0 must be at least 1"):
        ImageDataModule("digits", min_batches_per_epoch=0)


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
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 2, 1] = 255
    out = Augment(hflip=True, max_shift=2)(x)
    positions = {tuple(torch.nonzero(img[0]).flatten().tolist()) for img in out}
    assert len(positions) > 5  # images moved independently
    assert out.dtype == torch.uint8 and out.sum(dim=(1, 2, 3), dtype=torch.int64).max() <= 255


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    dm = setup(augment={"crop": {"scale": [0.25, 0.5]}})
    batch = dm.train_set.images[:16], dm.train_set.labels[:16]

    class Stage:
        training = True

    dm.trainer = Stage()
    trained, _ = dm.on_after_batch_transfer(batch, 0)
    Stage.training = False
    evaluated, _ = dm.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(evaluated, dm.normalize(batch[0]))
    assert (trained - evaluated).flatten(1).abs().amax(1).min() > 0.1  # every image cropped


# --- bad files and values: one DataError that names the file or value --------------------------

IDX_FILES = {"train-images-idx3-ubyte": (6, 4, 4), "train-labels-idx1-ubyte": (6,)}
IDX_FILES |= {"t10k-images-idx3-ubyte": (2, 4, 4), "t10k-labels-idx1-ubyte": (2,)}


def write_idx(raw, name: str, shape: tuple[int, ...], magic: int | None = None, cut: int = 0) -> None:
    """An IDX file of unsigned bytes (labels 0..5), optionally with another magic number or cut short."""
    header = (magic or 0x0800 + len(shape)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    data = header + bytes(i % 6 for i in range(math.prod(shape)))
    (raw / name).write_bytes(data[: len(data) - cut])


def mnist_folder(tmp_path, **change) -> str:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, shape in IDX_FILES.items():
        write_idx(raw, name, **{"shape": shape, **change.get(name, {})})
    load_source.cache_clear()
    return str(tmp_path)


def test_intact_idx_files_load(tmp_path):
    train, test = load_source("mnist", mnist_folder(tmp_path))
    assert train.images.shape == (6, 1, 4, 4) and len(test.labels) == 2


@pytest.mark.parametrize(
    "name,change,message",
    [
        (
            "train-labels-idx1-ubyte",
            {"magic": 0x0803},
            r"train-labels-idx1-ubyte is not an IDX file of MNIST labels: .*magic number 0x00000801, "
            r"this one with 0x00000803: replace it",
        ),
        ("t10k-images-idx3-ubyte", {"magic": 0x12345678}, r"t10k-images-idx3-ubyte is not an IDX file of MNIST images"),
        (
            "t10k-images-idx3-ubyte",
            {"cut": 5},
            r"t10k-images-idx3-ubyte is truncated: expected 48 bytes \(16 of header, 2x4x4 of data\), found 43",
        ),
        ("train-labels-idx1-ubyte", {"cut": 12}, r"train-labels-idx1-ubyte is truncated: expected at least 8 bytes"),
        (
            "train-labels-idx1-ubyte",
            {"cut": 14},
            r"train-labels-idx1-ubyte is truncated: .* 8 bytes of header, found 0",
        ),
        ("train-labels-idx1-ubyte", {"shape": (5,)}, r"holds 6 images but train-labels-idx1-ubyte holds 5 labels"),
    ],
)
def test_damaged_idx_files_are_named_with_what_is_wrong(tmp_path, name, change, message):
    root = mnist_folder(tmp_path, **{name: change})
    with pytest.raises(DataError, match=message) as err:
        load_source("mnist", root)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value)


def class_folders(root, classes=("cat", "dog"), per_class=3, size=(6, 5)) -> None:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", size, color=40 * i).save(root / c / f"{i}.png")


def test_a_folder_without_class_folders_or_with_an_empty_one(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"no images to read in .*: Couldn't find any class folder.*CLASS/IMAGE"):
        load_source("folder", str(tmp_path))
    class_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match=r"no images to read in .*: Found no valid file for the classes empty\."):
        load_source("folder", str(tmp_path))


def huge_png(path, width: int, height: int) -> None:
    """A PNG that says it is width x height: a tiny one with its header's size (and CRC) rewritten."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's data starts at byte 16, after its type at 12
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_a_bad_file(tmp_path):
    class_folders(tmp_path)
    huge_png(tmp_path / "dog" / "bomb.png", 20000, 20000)
    with pytest.raises(DataError, match=r"(?s)1 unreadable file.*bomb.png \(too large to decode safely: .*400000000"):
        load_source("folder", str(tmp_path), image_size=(4, 4))
    load_source.cache_clear()
    with pytest.warns(UserWarning, match="bomb.png"):
        train, test = load_source("folder", str(tmp_path), image_size=(4, 4), on_bad_file="skip")
    assert len(train.labels) + len(test.labels) == 6


def test_an_image_over_pils_warning_limit_is_refused_too(tmp_path, monkeypatch):
    from PIL import Image

    class_folders(tmp_path, size=(6, 5))  # 30 pixels: over the limit, and under twice the limit (a warning)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError, match=r"(?s)6 unreadable file.*0.png \(too large to decode safely: .*30 pixels"):
        load_source("folder", str(tmp_path))


def test_an_unreadable_face_image_is_named(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "1.pgm").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"unreadable face image .*s1/1.pgm \(not an image file PIL can read\)"):
        load_source("faces", str(tmp_path))


def test_file_names_are_listed_without_their_control_characters(tmp_path):
    class_folders(tmp_path)
    (tmp_path / "cat" / "\x1b[2Jx\ny.png").write_bytes(b"junk")
    with pytest.raises(DataError) as err:
        load_source("folder", str(tmp_path))
    assert "cat/\\x1b[2Jx\\ny.png (not an image file" in str(err.value) and "\x1b" not in str(err.value)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"image_size": [0, 0]}, r"data.image_size=\[0, 0\] must be \[height, width\], both at least 1 pixel"),
        ({"image_size": [8]}, r"data.image_size=\[8\] must be \[height, width\]"),
        ({"std": [0]}, r"data.std=\[0\] must be positive"),
        ({"std": [-1.0]}, r"data.std=\[-1.0\] must be positive"),
        ({"mean": [math.inf]}, r"data.mean=\[inf\] must be finite numbers"),
        ({"val_size": 1.5}, r"data.val_size=1.5 must be a whole count >= 0 or a fraction in \[0, 1\), e.g. 0.1$"),
        ({"val_size": -1}, r"data.val_size=-1 must be"),
        ({"max_shift": 1000}, r"data.max_shift=1000 would shift images of 8x8 pixels out of view: use less than 8"),
        ({"max_shift": -1}, r"data.max_shift=-1 must be >= 0"),
        ({"batches": "pairs", "pairs_per_image": 0}, r"data.pairs_per_image=0 must be at least 1"),
        ({"batches": "pairs", "classes": [3]}, r"pairs need at least 2 classes .*the training split has 1 class"),
        (
            {"batches": "pairs", "split_by": "class", "val_size": 1},
            r"pairs need at least 2 classes .*the validation split has 1 class",
        ),
    ],
)
def test_unusable_values_are_refused_before_any_loader_is_made(kw, message):
    with pytest.raises(DataError, match=message):
        setup(**kw)


def test_a_whole_val_size_is_a_count():
    assert len(setup(val_size=20.0).val_set.labels) == 20
