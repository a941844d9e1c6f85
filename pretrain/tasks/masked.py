"""Masked prediction, in the spirit of MAE: hide most patches, predict their pixels.

Each image is cut into ``patch_size`` patches; a random ``mask_ratio`` of them (exactly
that many per image) are hidden, and the loss is the mean squared error over the hidden
patches only (optionally against per-patch normalized pixels, MAE's ``norm_pix_loss``).

The ViT works as MAE does: its hidden tokens are dropped after the patch embedding (which
adds the positions), so the transformer blocks run on the visible quarter of the tokens
only (at the default ratio 0.75), and a light transformer decoder (``TokenDecoder``: the
visible tokens' features, a learned mask token in each hidden place, its own positions,
``decoder_depth`` blocks of width ``decoder_dim``) predicts each token's patch pixels. A
``patch_size`` that is a multiple of the ViT's hides square groups of tokens.

Other encoders cannot drop part of their input: they see the image with the hidden patches
filled with 0 (the data set's mean after normalization), and a decoder that mirrors the
encoder block by block (``mirror_decoder``, the autoencoder's) predicts every pixel.

Either way the exported encoder is the plain block stack: fine-tuning runs it on all tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import islice

import torch
from torch import Tensor, nn

from pretrain.data.module import DataInfo, denormalize
from pretrain.encoders import Encoder, patchify, unpatchify
from pretrain.tasks.autoencoder import Unpatchify, mirror_decoder
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


def split_visible(mask: Tensor, visible: int) -> tuple[Tensor, Tensor]:
    """``(ids_keep, ids_restore)`` for a ``(N, L)`` mask (True = hidden) with ``visible`` False per row.

    ``ids_keep`` ``(N, visible)`` are the visible positions in order; ``ids_restore`` ``(N, L)``
    says where each position's token sits in the sequence of the visible tokens followed by the
    hidden ones, so gathering that sequence by it puts every token back in place (MAE's unshuffle).
    """
    order = mask.to(torch.uint8).argsort(dim=1, stable=True)
    return order[:, :visible], order.argsort(dim=1)


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


class TokenDecoder(nn.Module):
    """MAE's decoder: the visible tokens' features, a learned mask token in every hidden place,
    learned positions, ``depth`` pre-norm transformer blocks, and a linear map from each token
    to its patch's pixels, returned as images."""

    def __init__(
        self,
        encoder_dim: int,
        image_shape: Sequence[int],
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
    ) -> None:
        super().__init__()
        channels, height, width = (int(d) for d in image_shape)
        self.norm = nn.LayerNorm(encoder_dim)  # MAE's encoder ends in a norm; the ViT's pre-norm blocks do not
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, (height // patch_size) * (width // patch_size), dim))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    dim, heads, round(dim * mlp_ratio), 0.0, activation=activation, batch_first=True, norm_first=True
                )
                for _ in range(depth)
            )
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels * patch_size * patch_size))
        self.unpatchify = Unpatchify(patch_size, (height, width))

    def forward(self, visible: Tensor, ids_restore: Tensor) -> Tensor:
        """Images predicted from ``(N, K, encoder_dim)`` visible-token features and the
        ``(N, L)`` ``ids_restore`` of ``split_visible``."""
        x = self.embed(self.norm(visible))
        n, kept, dim = x.shape
        x = torch.cat([x, self.mask_token.expand(n, ids_restore.shape[1] - kept, dim)], dim=1)
        x = x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim)) + self.position
        return self.unpatchify(self.head(self.blocks(x)))


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
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        self.drops_tokens = encoder.arch == "vit"
        token_size = encoder.options["patch_size"] if self.drops_tokens else 1
        self.patch_size = patch_size or (token_size if self.drops_tokens else 4)
        self.mask_ratio = mask_ratio if mask_ratio is not None else (PATCH_RATIO if self.drops_tokens else CONV_RATIO)
        self.norm_pix_loss = norm_pix_loss
        _, height, width = data.input_shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"task.patch_size {self.patch_size} must divide the image height and width {(height, width)}"
            )
        if self.patch_size % token_size:
            raise ValueError(
                f"task.patch_size {self.patch_size} must be a multiple of the vit's patch size {token_size}: "
                "hidden tokens are dropped whole; leave task.patch_size null to hide single tokens"
            )
        self.grid = (height // self.patch_size, width // self.patch_size)
        patches = math.prod(self.grid)
        if not 0 < round(self.mask_ratio * patches) < patches:
            raise ValueError(
                f"task.mask_ratio {self.mask_ratio} hides {round(self.mask_ratio * patches)} of {patches} patches: "
                "choose a ratio that hides at least one patch and leaves at least one visible"
            )
        if decoder_dim < 1 or decoder_depth < 1 or decoder_heads < 1 or decoder_dim % decoder_heads:
            raise ValueError(
                f"task.decoder_dim {decoder_dim}, decoder_depth {decoder_depth}, decoder_heads {decoder_heads}: "
                "each must be at least 1, and decoder_dim a multiple of decoder_heads"
            )
        if self.drops_tokens:
            self.patch_side = self.patch_size // token_size  # a patch is patch_side x patch_side tokens
            self.visible_tokens = (patches - round(self.mask_ratio * patches)) * self.patch_side**2
            options = encoder.options
            self.decoder: nn.Module = TokenDecoder(
                options["dim"],
                data.input_shape,
                token_size,
                decoder_dim,
                decoder_depth,
                decoder_heads,
                options["mlp_ratio"],
                options["activation"],
            )
        else:
            self.decoder = mirror_decoder(encoder)
        self._preview: Tensor | None = None

    def mask(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A fresh patch mask ``(N, L)`` (True = hidden) and the images with the hidden patches set to 0."""
        mask = random_patch_mask(len(images), math.prod(self.grid), self.mask_ratio, images.device, generator)
        return mask, images.masked_fill(self.hidden_pixels(mask), 0.0)

    def hidden_pixels(self, mask: Tensor) -> Tensor:
        """``(N, 1, H, W)`` booleans, True on the pixels of the hidden patches of ``mask``."""
        pixels = mask.view(-1, 1, *self.grid).repeat_interleave(self.patch_size, 2)
        return pixels.repeat_interleave(self.patch_size, 3)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        """Every pixel as predicted with the patches that ``mask`` (``(N, L)``, True = hidden) hides."""
        if not self.drops_tokens:
            return self.decoder(self.encoder(images.masked_fill(self.hidden_pixels(mask), 0.0)))
        side = self.patch_side
        token_mask = mask.view(-1, *self.grid).repeat_interleave(side, 1).repeat_interleave(side, 2).flatten(1)
        ids_keep, ids_restore = split_visible(token_mask, self.visible_tokens)
        tokens = self.encoder.blocks[0](images)  # the patch embedding, positions added: before any token is dropped
        x = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        for block in islice(self.encoder.blocks, 1, None):
            x = block(x)
        return self.decoder(x, ids_restore)

    def task_loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The loss on a batch under fresh masks (drawn from ``generator`` if given)."""
        mask = random_patch_mask(len(images), math.prod(self.grid), self.mask_ratio, images.device, generator)
        prediction = patchify(self(images, mask), self.patch_size)
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
        """``(masked, predicted)`` normalized images: the model's input, and its own prediction in the
        hidden patches with the visible ones blank (0, the data mean, as the input's hidden ones), so
        that nothing in the picture of the prediction is copied from the image.

        Under ``norm_pix_loss`` the model predicts each hidden patch's pattern in per-patch
        normalized units, not its brightness or contrast, and those are the hidden patch's own
        (showing them would paste part of the answer in): the prediction is shown at the mean
        and standard deviation of the image's visible pixels, what the model was given.
        """
        mask, masked = self.mask(images, generator)
        prediction = patchify(self(images, mask), self.patch_size)
        if self.norm_pix_loss:
            visible = patchify(images, self.patch_size)[~mask].view(len(images), -1)
            prediction = prediction * visible.std(1).view(-1, 1, 1) + visible.mean(1).view(-1, 1, 1)
        filled = torch.where(mask.unsqueeze(-1), prediction, 0.0)
        return masked, unpatchify(filled, self.patch_size, images.shape[2:])

    def preview_rows(self, images: Tensor) -> list[tuple[str, Tensor]]:
        """Labeled rows of 0..1 images: ``images``, them as masked, and the model's prediction of the
        hidden patches (``reconstruct``); the same mask every epoch."""
        was_training = self.training
        self.eval()
        masked, predicted = self.reconstruct(images, torch.Generator(device=images.device).manual_seed(0))
        self.train(was_training)
        rows = zip(("original", "masked input", "prediction"), (images, masked, predicted), strict=True)
        return [(label, denormalize(x, self.data_info.mean, self.data_info.std)) for label, x in rows]

    def on_train_epoch_end(self) -> None:
        """``masked/epoch_NNN.png``: ``preview_rows`` of the first training images."""
        super().on_train_epoch_end()
        if self._preview is not None:
            self.save_figure(
                f"masked/epoch_{self.current_epoch:03d}.png",
                self.preview_rows(self._preview),
                title=f"epoch {self.current_epoch}: hidden patches as predicted",
            )
