"""Autoencoder: reconstruct the image from the encoder's top features.

The decoder mirrors the encoder block by block (``mirror_block``): dense blocks map back
with dense layers, convolutional blocks with upsampling and 3x3 convolutions, so any
registered backbone gets a decoder of matching depth and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.data import DataInfo
from pretrain.encoders import ACTIVATIONS, Encoder, EncoderError
from pretrain.tasks.base import OptimizerFactory, PretextTask

LOSSES = ("mse", "bce")


def mirror_block(shape_in: Sequence[int], shape_out: Sequence[int], activation: str, last: bool) -> nn.Module:
    """A decoder block from features of ``shape_in`` back to ``shape_out`` (no batch dimension)."""
    layers: list[nn.Module] = []
    if len(shape_in) == 1:
        layers.append(nn.Linear(shape_in[0], math.prod(shape_out)))
        if len(shape_out) > 1:
            layers.append(nn.Unflatten(1, tuple(shape_out)))
    elif len(shape_in) == 3 and len(shape_out) == 3:
        if tuple(shape_in[1:]) != tuple(shape_out[1:]):
            layers.append(nn.Upsample(size=tuple(shape_out[1:]), mode="nearest"))
        layers.append(nn.Conv2d(shape_in[0], shape_out[0], 3, padding=1))
        if not last:
            layers.append(nn.BatchNorm2d(shape_out[0]))
    else:
        raise EncoderError(f"no mirrored decoder block from features {tuple(shape_in)} to {tuple(shape_out)}")
    if not last:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def mirror_decoder(encoder: Encoder) -> nn.Sequential:
    """One decoder block per encoder block, in reverse order, ending at the input shape."""
    shapes = encoder.block_shapes()
    activation = encoder.options.get("activation", "relu")
    blocks = [mirror_block(shapes[i + 1], shapes[i], activation, last=(i == 0)) for i in reversed(range(len(encoder)))]
    return nn.Sequential(*blocks)


def reconstruction_loss(output: Tensor, target: Tensor, loss: str, data: DataInfo) -> Tensor:
    """MSE in normalized pixel space, or BCE against 0..1 pixels (``output`` are then logits)."""
    if loss == "mse":
        return F.mse_loss(output, target)
    mean = target.new_tensor(data.mean).view(1, -1, 1, 1)
    std = target.new_tensor(data.std).view(1, -1, 1, 1)
    pixels = (target * std + mean).clamp(0, 1)
    return F.binary_cross_entropy_with_logits(output, pixels)


class Autoencoder(PretextTask):
    name = "autoencoder"

    def __init__(self, encoder: Encoder, optimizer: OptimizerFactory, data: DataInfo, loss: str = "mse") -> None:
        super().__init__(encoder, optimizer, data)
        if loss not in LOSSES:
            raise ValueError(f"task.loss must be one of {LOSSES}, not {loss!r}")
        self.loss = loss
        self.decoder = mirror_decoder(encoder)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, _ = batch
        loss = reconstruction_loss(self(images), images, self.loss, self.data_info)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")
