"""Small synthetic data and trainers for the pretext-task tests."""

from __future__ import annotations

import functools

import lightning as L
import torch
from torch import Tensor

from pretrain.data.batching import EpochPairs, EpochPermutation, PairBatches, TensorBatches
from pretrain.data.module import DataInfo
from pretrain.encoders import build_encoder

SHAPE = (1, 16, 16)
ADAM = functools.partial(torch.optim.Adam, lr=3e-3)


def images(classes: int = 4, per_class: int = 16, seed: int = 0, shape=SHAPE) -> tuple[Tensor, Tensor]:
    """Normalized-scale images: one smooth random template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.nn.functional.interpolate(torch.randn(classes, 1, 4, 4, generator=g), size=shape[1:])
    labels = torch.arange(classes).repeat_interleave(per_class)
    return templates[labels] + 0.3 * torch.randn(len(labels), *shape, generator=g), labels


def info(classes: int = 4, n: int = 64, shape=SHAPE) -> DataInfo:
    return DataInfo("synthetic", shape, tuple(str(i) for i in range(classes)), (0.0,), (1.0,), n)


def loader(x: Tensor, y: Tensor, batch_size: int = 32, pairs: bool = False) -> TensorBatches:
    if pairs:
        return PairBatches(x, y, batch_size, EpochPairs(y, 2, shuffle=True, seed=0))
    return TensorBatches(x, y, batch_size, EpochPermutation(len(y), shuffle=True, seed=0))


def encoder(arch: str, shape=SHAPE):
    small = {"mlp": {"widths": [64, 32]}, "cnn": {"channels": [8, 16]}, "vit": {"dim": 32, "layers": 2}}
    return build_encoder(arch, shape, **small.get(arch, {}))


def trainer(tmp_path, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
        **kw,
    )


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def image_folder(root, classes: int = 3, per_class: int = 8, size=(12, 10), seed: int = 0):
    """A folder of class subfolders ``c0, c1, ...`` of small RGB images, alternately PNG and JPEG files
    (those of each class share a colour, so classes can be told apart). Returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        base = torch.randint(0, 256, (3,), generator=g)
        for i in range(per_class):
            noise = torch.randint(-30, 31, (size[0], size[1], 3), generator=g)
            pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root
