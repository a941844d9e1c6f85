"""python -m pretrain.portable: an encoder file as a torch.export program giving the same features."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pretrain.encoder_file.format import load_encoder, save_encoder
from pretrain.encoder_file.portable import portable
from pretrain.encoders import build_encoder

ARCHS = {
    "cnn": ((1, 12, 12), {"channels": [4, 8]}),
    "mlp": ((1, 8, 8), {"widths": [16, 8]}),
    "vit": ((3, 16, 16), {"patch_size": 4, "dim": 16, "depth": 2, "heads": 2}),
    "resnet18": ((3, 16, 16), {}),
}


def encoder_file(tmp_path, arch):
    torch.manual_seed(0)
    shape, options = ARCHS[arch]
    encoder = build_encoder(input_shape=shape, arch=arch, **options)
    path = tmp_path / f"{arch}.safetensors"
    mean, std = [0.4] * shape[0], [0.2] * shape[0]
    save_encoder(path, encoder, mean=mean, std=std, pretext={"task": "t"}, data={"name": "d"})
    return load_encoder(path)


@pytest.mark.parametrize(
    "arch",
    ["cnn", pytest.param("mlp", marks=pytest.mark.slow)]
    + [pytest.param(a, marks=pytest.mark.slow) for a in ("vit", "resnet18")],
)
@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_the_program_gives_the_encoder_files_features_for_any_batch_size(tmp_path, arch, pool):
    loaded = encoder_file(tmp_path, arch)
    program = portable(loaded, pool=pool)
    torch.export.save(program, tmp_path / "e.pt2")
    run = torch.export.load(tmp_path / "e.pt2").module()
    for batch in (1, 7):
        images = torch.randint(0, 256, (batch, *loaded.encoder.input_shape), dtype=torch.uint8)
        torch.testing.assert_close(run(images), loaded.features(images, pool=pool), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_command(tmp_path):
    loaded = encoder_file(tmp_path, "cnn")
    ok = subprocess.run(
        [sys.executable, "-m", "pretrain.portable", tmp_path / "cnn.safetensors", tmp_path / "e.pt2", "--blocks", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    images = torch.randint(0, 256, (3, 1, 12, 12), dtype=torch.uint8)
    out = torch.export.load(tmp_path / "e.pt2").module()(images)
    torch.testing.assert_close(out, loaded.features(images, blocks=1))
    bad = subprocess.run(
        [sys.executable, "-m", "pretrain.portable", tmp_path / "cnn.safetensors", tmp_path / "f.pt2", "--blocks", "3"],
        capture_output=True,
        text=True,
    )
    assert (bad.returncode, bad.stderr) == (2, "error: --blocks 3: the encoder has 2 blocks\n")
    assert not (tmp_path / "f.pt2").exists()
