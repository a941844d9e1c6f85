"""Masked prediction, in the spirit of MAE: hide most patches, predict their pixels.

Each image is cut into ``patch_size`` patches; a random ``mask_ratio`` of them (exactly
that many per image) are hidden by filling them with 0, the data set's mean after
normalization. The encoder sees the masked image, a light decoder predicts every pixel,
and the loss is the mean squared error over the hidden patches only (optionally against
per-patch normalized pixels, MAE's ``norm_pix_loss``).

The decoder mirrors the encoder block by block (``mirror_decoder``): for the ViT that is a
token-wise MLP ending in one linear map from each token to its patch's pixels (SimMIM's
light decoder, deepened by one linear layer per block); for convolutional and dense
encoders it is the autoencoder's decoder. Unlike MAE the ViT sees the hidden patches as
mean-valued tokens instead of dropping them, so every encoder family takes the same input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pretrain.data import DataInfo, denormalize
from pretrain.encoders import Encoder, patchify, unpatchify
from pretrain.tasks.autoencoder import mirror_decoder
from pretrain.tasks.base import OptimizerFactory, PretextTask

PATCH_RATIO = 0.75
"""Default mask ratio for patch-based encoders (MAE's): a token sees nothing of a hidden patch."""
CONV_RATIO = 0.5
"""Default for other encoders: their receptive fields mix neighbouring patches, and inputs that
are mostly mask at pretraining differ the more from the unmasked images they see after."""
PREVIEW_IMAGES = 8


def random_patch_mask(
    batch: int, patches: int, ratio: float, device: torch.device | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """``(batch, patches)`` booleans, True = hidden, with exactly ``round(ratio * patches)`` per row."""
    hidden = round(ratio * patches)
    rank = torch.rand(batch, patches, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < hidden


def masked_patch_loss(prediction: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = False) -> Tensor:
    """Mean squared error over the hidden patches only.

    ``prediction`` and ``target`` are ``(N, L, P)`` patch pixels, ``mask`` ``(N, L)`` with True
    on hidden patches. With ``norm_pix`` each target patch is normalized to zero mean and
    unit variance first.
    """
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def normalize_patches(patches: Tensor) -> Tensor:
    mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + 1e-6).sqrt()


class MaskedPrediction(PretextTask):
    name = "masked"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        patch_size: int | None = None,
        mask_ratio: float | None = None,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        patch_based = encoder.arch == "vit"
        self.patch_size = patch_size or (encoder.options["patch_size"] if patch_based else 4)
        self.mask_ratio = mask_ratio if mask_ratio is not None else (PATCH_RATIO if patch_based else CONV_RATIO)
        self.norm_pix_loss = norm_pix_loss
        _, height, width = data.input_shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"task.patch_size {self.patch_size} must divide the image height and width {(height, width)}"
            )
        self.grid = (height // self.patch_size, width // self.patch_size)
        patches = math.prod(self.grid)
        if not 0 < round(self.mask_ratio * patches) < patches:
            raise ValueError(
                f"task.mask_ratio {self.mask_ratio} hides {round(self.mask_ratio * patches)} of {patches} patches: "
                "choose a ratio that hides at least one patch and leaves at least one visible"
            )
        self.decoder = mirror_decoder(encoder)
        self._preview: Tensor | None = None

    def mask(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A fresh patch mask ``(N, L)`` and the images with the hidden patches set to 0."""
        mask = random_patch_mask(len(images), math.prod(self.grid), self.mask_ratio, images.device, generator)
        pixels = mask.view(-1, 1, *self.grid).repeat_interleave(self.patch_size, 2)
        pixels = pixels.repeat_interleave(self.patch_size, 3)
        return mask, images.masked_fill(pixels, 0.0)

    def forward(self, masked_images: Tensor) -> Tensor:
        """Predicted pixels of every patch, as an image."""
        return self.decoder(self.encoder(masked_images))

    def task_loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The loss on a batch under fresh masks (drawn from ``generator`` if given)."""
        mask, masked = self.mask(images, generator)
        prediction = patchify(self(masked), self.patch_size)
        return masked_patch_loss(prediction, patchify(images, self.patch_size), mask, self.norm_pix_loss)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        if self._preview is None:
            self._preview = images[:PREVIEW_IMAGES].detach().clone()
        loss = self.task_loss(images)
        self.log_train({"loss": loss}, len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The same masks every epoch, so that validation losses compare.
        generator = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        loss = self.task_loss(batch[0], generator)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True)
        return loss

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(masked, reconstructed)`` normalized images: the reconstruction keeps the visible patches
        and fills the hidden ones with the prediction (denormalized per patch under ``norm_pix_loss``)."""
        mask, masked = self.mask(images, generator)
        target = patchify(images, self.patch_size)
        prediction = patchify(self(masked), self.patch_size)
        if self.norm_pix_loss:  # predictions are in per-patch units: show them in the image's own
            prediction = prediction * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        filled = torch.where(mask.unsqueeze(-1), prediction, target)
        return masked, unpatchify(filled, self.patch_size, images.shape[2:])

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._preview is None:
            return
        was_training = self.training
        self.eval()
        generator = torch.Generator(device=self._preview.device).manual_seed(0)
        masked, reconstructed = self.reconstruct(self._preview, generator)
        self.train(was_training)
        rows = [denormalize(x, self.data_info.mean, self.data_info.std) for x in (self._preview, masked, reconstructed)]
        self.save_figure(f"masked/epoch_{self.current_epoch:03d}.png", torch.cat(rows), nrow=len(self._preview))
