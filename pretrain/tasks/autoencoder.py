"""Autoencoder: reconstruct the image from the encoder's top features.

The decoder mirrors the encoder block by block (``mirror_block``): dense blocks map back
with dense layers, convolutional blocks with upsampling and 3x3 convolutions, so any
registered backbone gets a decoder of matching depth and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from pretrain.data.module import DataInfo
from pretrain.encoders import ACTIVATIONS, Encoder, EncoderError, unpatchify
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
    elif len(shape_in) == 2 and len(shape_out) == 2 and shape_in[0] == shape_out[0]:
        layers.append(nn.Linear(shape_in[1], shape_out[1]))  # token by token
    elif len(shape_in) == 2 and len(shape_out) == 3:
        # One token per patch back to an image: each token predicts its patch's pixels.
        patch = _patch_size(shape_in[0], shape_out)
        layers += [nn.Linear(shape_in[1], shape_out[0] * patch * patch), Unpatchify(patch, shape_out[1:])]
    else:
        raise EncoderError(f"no mirrored decoder block from features {tuple(shape_in)} to {tuple(shape_out)}")
    if not last:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _patch_size(tokens: int, image_shape: Sequence[int]) -> int:
    """The square patch size that cuts an image of ``image_shape`` into ``tokens`` patches."""
    height, width = int(image_shape[1]), int(image_shape[2])
    patch = round(math.sqrt(height * width / tokens))
    if patch < 1 or height % patch or width % patch or (height // patch) * (width // patch) != tokens:
        raise EncoderError(f"{tokens} tokens are not square patches of an image of shape {tuple(image_shape)}")
    return patch


class Unpatchify(nn.Module):
    """``(N, L, C*p*p)`` patch pixels to ``(N, C, H, W)`` images."""

    def __init__(self, patch_size: int, image_size: Sequence[int]) -> None:
        super().__init__()
        self.patch_size, self.image_size = patch_size, tuple(int(d) for d in image_size)

    def forward(self, patches: Tensor) -> Tensor:
        return unpatchify(patches, self.patch_size, self.image_size)


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
    """Reconstruct the image through a mirrored decoder, end to end or greedily layer by layer.

    With ``greedy=True`` (greedy layer-wise pretraining, as in Géron's chapter 11) training runs in one
    stage per encoder block: stage k trains block k under its own one-block decoder to
    reconstruct block k's input (the image for k=0, else the features of the frozen blocks
    below), with the blocks below frozen (no gradient, inference mode). Each stage lasts
    ``stage_epochs`` epochs (default: ``trainer.max_epochs`` split evenly over the stages).
    The stage is a function of the epoch alone, so a resumed run picks it up where it was.
    The exported encoder is the full stack.

    With ``noise`` > 0 it is a denoising autoencoder (Vincent et al., 2008): in training, Gaussian
    noise of that standard deviation (in normalized units) is added to what the encoder (or the
    stage's block) takes in, and the target is the clean input, so the features must capture
    the structure of the images rather than copy pixels.
    """

    name = "autoencoder"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        loss: str = "mse",
        greedy: bool = False,
        stage_epochs: int | None = None,
        noise: float = 0.0,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        if not 0 <= noise < math.inf:
            raise ValueError(f"task.noise={noise} must be a standard deviation >= 0 (0: no noise)")
        if loss not in LOSSES:
            raise ValueError(f"task.loss must be one of {LOSSES}, not {loss!r}")
        if stage_epochs is not None and (not greedy or stage_epochs < 1):
            raise ValueError(f"task.stage_epochs={stage_epochs} needs task.greedy=true and a value of at least 1")
        self.loss, self.greedy, self.stage_epochs, self.noise = loss, greedy, stage_epochs, noise
        if greedy:
            shapes = encoder.block_shapes()
            activation = encoder.options.get("activation", "relu")
            # Linear outputs: stage k reconstructs real-valued features (or image logits for k=0).
            self.stage_decoders = nn.ModuleList(
                mirror_block(shapes[k + 1], shapes[k], activation, last=True) for k in range(len(encoder))
            )
        else:
            self.decoder = mirror_decoder(encoder)

    def corrupted(self, x: Tensor) -> Tensor:
        """What the encoder takes in: ``x`` with the denoising noise in training, ``x`` otherwise."""
        return x + self.noise * torch.randn_like(x) if self.noise and self.training else x

    def forward(self, x: Tensor) -> Tensor:
        if self.greedy:
            raise RuntimeError("a greedy autoencoder has one decoder per stage and no end-to-end forward")
        return self.decoder(self.encoder(x))

    # --- greedy stages -------------------------------------------------------------------------

    @property
    def epochs_per_stage(self) -> int:
        if self.stage_epochs is not None:
            return self.stage_epochs
        return max(1, (self.trainer.max_epochs or 0) // len(self.encoder))

    @property
    def stage(self) -> int:
        """The block that trains now (greedy mode)."""
        if self._trainer is None:
            return 0
        return min(self.current_epoch // self.epochs_per_stage, len(self.encoder) - 1)

    def on_fit_start(self) -> None:
        if not self.greedy:
            return
        stages, max_epochs = len(self.encoder), self.trainer.max_epochs
        needed = stages * (self.stage_epochs or 1)
        if max_epochs is None or max_epochs < needed:
            raise ValueError(
                f"greedy layer-wise training of a {stages}-block encoder needs {stages} stages x "
                f"{self.stage_epochs or 1} epoch(s) = {needed} epochs, but trainer.max_epochs={max_epochs}: "
                f"raise trainer.max_epochs to at least {needed} or lower task.stage_epochs"
            )
        self.require_unused_parameters("each greedy stage trains one block and one decoder, leaving the rest unused")
        self.train(self.training)

    def on_train_epoch_start(self) -> None:
        if self.greedy:
            self.train(True)  # the stage may have moved on: put the newly frozen block in inference mode
            if self.current_epoch == self.stage * self.epochs_per_stage:
                rank_zero_info(
                    f"greedy stage {self.stage + 1} of {len(self.encoder)}: training block {self.stage} "
                    f"({self.encoder.block_names[self.stage]}){', the blocks below frozen' if self.stage else ''}"
                )

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.greedy:
            self.log("train/stage", float(self.stage), on_step=False, on_epoch=True)
        # With explicit stage_epochs, stop once every stage has had them (without, the last stage takes the rest).
        if self.stage_epochs is not None and self.current_epoch + 1 >= len(self.encoder) * self.stage_epochs:
            self.trainer.should_stop = True

    def train(self, mode: bool = True) -> Autoencoder:
        super().train(mode)
        if getattr(self, "greedy", False):
            for block in self.encoder.blocks[: self.stage]:
                block.eval()  # frozen: batch-norm statistics and dropout do not move either
        return self

    def stage_loss(self, images: Tensor) -> Tensor:
        """The current stage's reconstruction loss on a batch (greedy mode)."""
        k = self.stage
        with torch.no_grad():
            features = self.encoder.blocks[:k](images)  # frozen blocks: no graph, so no gradient
        output = self.stage_decoders[k](self.encoder.blocks[k](self.corrupted(features)))
        if k == 0:
            return reconstruction_loss(output, images, self.loss, self.data_info)
        return F.mse_loss(output, features)

    # --- steps ---------------------------------------------------------------------------------

    def task_loss(self, images: Tensor) -> Tensor:
        """The loss on a batch: the current stage's under greedy training, the whole stack's otherwise."""
        if self.greedy:
            return self.stage_loss(images)
        return reconstruction_loss(self(self.corrupted(images)), images, self.loss, self.data_info)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.task_loss(batch[0])
        self.log_train({"loss": loss}, len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.task_loss(batch[0])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True)
        return loss
