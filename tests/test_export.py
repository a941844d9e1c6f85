"""The encoder file: bit-exact round trip, safetensors only, no pickle, clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from helpers import CONF
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from pretrain.encoder_file.format import EncoderFileError, load_encoder, save_encoder
from pretrain.encoders import build_encoder
from pretrain.run.files import AtomicCheckpointIO, atomic_write, write_json


def write(path, arch="cnn", shape=(1, 8, 8), **options):
    torch.manual_seed(0)
    encoder = build_encoder(arch, shape, **options)
    # Non-trivial batch-norm buffers, so the round trip covers them too.
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(16, *shape))
    save_encoder(
        path,
        encoder,
        mean=[0.5] * shape[0],
        std=[0.25] * shape[0],
        pretext={"task": "autoencoder"},
        data={"name": "digits"},
        metrics={"val/loss": 0.1},
    )
    return encoder.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)), ("resnet18", (1, 8, 8))])
def test_round_trip_is_bit_identical_in_a_fresh_process(tmp_path, arch, shape):
    path = tmp_path / "encoder.safetensors"
    encoder = write(path, arch, shape)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    torch.save(encoder(x).detach(), tmp_path / "y.pt")
    code = (
        "import sys, torch; from pretrain.encoder_file.format import load_encoder;"
        f"e = load_encoder(r'{path}').encoder; x = torch.load(r'{tmp_path / 'x.pt'}');"
        f"y = torch.load(r'{tmp_path / 'y.pt'}'); sys.exit(0 if torch.equal(e(x), y) else 3)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "backbone,shape,blocks",
    [("resnet18", (3, 64, 64), 5), ("resnet50", (3, 64, 64), 5), ("vit_small", (3, 32, 32), 13)],
)
def test_real_resolution_backbones_round_trip(tmp_path, backbone, shape, blocks):
    """The backbones for large images (torchvision's stem, ViT-S/16), at small sizes to stay fast."""
    options = OmegaConf.to_container(OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml"))
    encoder = write(tmp_path / "e.safetensors", shape=shape, **options)
    loaded = load_encoder(tmp_path / "e.safetensors").encoder
    assert loaded.spec() == encoder.spec() and len(loaded) == blocks
    x = torch.randn(2, *shape)
    assert torch.equal(loaded(x), encoder(x))


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    path = tmp_path / "encoder.safetensors"
    encoder = write(path)
    tensors = load_file(path)  # safetensors alone: no project code, no pickle
    assert set(tensors) == set(encoder.state_dict())
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["pretext"])
    assert meta["arch"] == "cnn" and meta["input_shape"] == [1, 8, 8] and meta["depth"] == 3
    assert meta["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert meta["pretext"]["task"] == "autoencoder" and "torch" in meta["versions"] and meta["created"]
    # An 8-byte header length, a JSON header, then raw tensor bytes that the header accounts
    # for exactly: there is no room for a pickle anywhere.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_truncated_encoder_round_trips(tmp_path):
    encoder = build_encoder("mlp", (1, 8, 8), widths=[16, 8, 4]).truncated(2)
    path = save_encoder(
        tmp_path / "e.safetensors",
        encoder,
        mean=[0.0],
        std=[1.0],
        pretext={"task": "supervised"},
        data={"name": "digits"},
    )
    loaded = load_encoder(path).encoder
    assert len(loaded) == 2 and loaded.block_names == ["dense1", "dense2"]


def test_pickle_suffix_is_refused_with_the_export_command(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"not opened")
    with pytest.raises(EncoderFileError, match="python -m pretrain.export"):
        load_encoder(ckpt)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(EncoderFileError, match="does not exist.*encoder=none"):
        load_encoder(tmp_path / "nope.safetensors")


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "encoder.safetensors"
    write(path)
    before = path.read_bytes()

    def half_then_crash(tmp):
        tmp.write_bytes(before[:100])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.safetensors"]
    load_encoder(path)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Colleagues on a shared cluster read what a run wrote: every file written through atomic_write
    gets the mode a plain open() would give it (safetensors stages its own 0600 temporary file)."""
    previous = os.umask(umask)
    try:
        write(tmp_path / "encoder.safetensors")
        write_json(tmp_path / "results.json", {"a": 1})
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["encoder.safetensors", "results.json", "last.ckpt"], 0o666 & ~umask)


def test_features_normalize_raw_images_as_in_training_and_pool_them(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(input_shape=(1, 12, 12), arch="cnn", channels=[4, 8])
    save_encoder(tmp_path / "e.st", encoder, mean=[0.3], std=[0.2], pretext={"task": "t"}, data={"name": "d"})
    loaded = load_encoder(tmp_path / "e.st")
    raw = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        maps = loaded.encoder.eval()((raw.float() / 255 - 0.3) / 0.2)  # (5, 8, 3, 3)
    torch.testing.assert_close(loaded.features(raw), maps.mean((2, 3)))
    torch.testing.assert_close(loaded.features(raw.float() / 255, pool="flatten"), maps.flatten(1))
    assert loaded.features(raw, blocks=1).shape == (5, 4)
    with pytest.raises(ValueError, match=r"images of shape \(3, 12, 12\), but the encoder takes \(1, 12, 12\)"):
        loaded.features(torch.zeros(2, 3, 12, 12))
