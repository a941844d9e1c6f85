"""Two augmented views of one image are "the same person": instance discrimination (SimCLR).

The label-free generalisation of ``siamese``, whose pairs are two images of one identity: here
every image of an ordinary image batch is an identity of its own (labels are not used). Each
image gets two random views; the encoder, ``GlobalPool`` and a projection head (Linear, batch
norm, ReLU, Linear) map the 2B views to L2-normalized vectors, and NT-Xent (SimCLR's normalized
temperature-scaled cross-entropy) asks each view to pick its partner out of the other 2B - 1 by
cosine similarity / ``temperature``. The exported file holds the encoder alone; the projection
head is dropped, as in SimCLR, whose features before the head transfer better.

Views (``Views``) are made on the training device from the normalized batch, each image drawn
on its own by the transforms of ``augment=`` (``pretrain.data.augment``, one implementation): a random
resized crop (area fraction in ``crop_scale``, aspect ratio in ``crop_ratio``) and a horizontal
flip, together one bilinear resampling of the whole batch; then, with probability ``jitter_p``,
brightness and contrast jitter of the 0..1 pixels (factors in ``1 +- brightness`` and
``1 +- contrast``). ``augment=`` itself (data.augment, data.hflip, data.max_shift) applies to
the batch before, once per image, if set. Training draws from the global torch generator of the device, inside
the training step, which the RandomState callback saves in every checkpoint, so a resumed run
draws the same views; validation draws from a generator seeded by the batch index, so its
losses compare from epoch to epoch and it takes nothing from the training stream.

Logged: ``train/loss`` and ``train/acc``, the fraction of views whose nearest other view is their
partner (``val/...`` the same on fixed views of the validation images, in batches of
``data.eval_batch_size``: more candidates, so not comparable to training's). The negatives are
the other images of the device's batch (under DDP each rank's own, not gathered across ranks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.data.augment import Augment
from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, GlobalPool, feature_dim
from pretrain.tasks.base import OptimizerFactory, PretextTask


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """NT-Xent of ``B`` pairs ``(a[i], b[i])`` of embeddings, and the fraction of the 2B views whose
    most similar other view is their partner.

    Each of the 2B views is a classification of its partner among the other 2B - 1 views, on
    cosine similarities divided by ``temperature``: cross-entropy over the similarity matrix with
    its diagonal (each view with itself) masked out. In float32 under mixed precision: the
    similarities of normalized vectors differ in the third digit, below bfloat16's precision.
    """
    with torch.autocast(a.device.type, enabled=False):
        z = F.normalize(torch.cat([a, b]).float(), dim=1)
        n = len(a)
        self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / temperature).masked_fill(self_pairs, -math.inf)
        partner = torch.arange(2 * n, device=z.device).roll(n)  # view i of a pairs with view i of b
        loss = F.cross_entropy(logits, partner)
    return loss, (logits.argmax(1) == partner).float().mean()


class Views(nn.Module):
    """Random views of normalized image batches, drawn per image by ``pretrain.data.augment.Augment``
    (a random resized crop, a flip, brightness and contrast jitter) on the 0..1 pixels."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: Sequence[float] = (0.2, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_p: float = 0.8,
    ) -> None:
        super().__init__()
        # Buffers, on the device with the task (a tensor made from numbers at every step waits for a GPU),
        # and not in the state dict: they come from the data, not from training.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        crop = {"scale": list(crop_scale), "ratio": list(crop_ratio)}
        jitter = {"p": jitter_p, "brightness": brightness, "contrast": contrast, "saturation": 0.0, "hue": 0.0}
        self.augment = Augment({"crop": crop, "jitter": jitter}, hflip=hflip)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return (self.augment(x * self.std + self.mean, generator) - self.mean) / self.std


class Contrastive(PretextTask):
    name = "contrastive"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        temperature: float = 0.2,
        projection_hidden: int = 256,
        projection_dim: int = 128,
        crop_scale: Sequence[float] = (0.2, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_p: float = 0.8,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        jitter = {"brightness": brightness, "contrast": contrast, "jitter_p": jitter_p}
        crop = {"crop_scale": crop_scale, "crop_ratio": crop_ratio}
        if problems := self.value_problems(temperature, projection_hidden, projection_dim, **crop, **jitter):
            raise ValueError("; ".join(problems))
        self.temperature = temperature
        self.pool = GlobalPool()
        self.projection = nn.Sequential(
            nn.Linear(feature_dim(encoder.block_shapes()[-1]), projection_hidden, bias=False),
            nn.BatchNorm1d(projection_hidden),
            nn.ReLU(),
            nn.Linear(projection_hidden, projection_dim),
        )
        self.views = Views(data.mean, data.std, hflip=hflip, **crop, **jitter)

    @staticmethod
    def value_problems(
        temperature: float = 0.2,
        projection_hidden: int = 256,
        projection_dim: int = 128,
        crop_scale: Sequence[float] = (0.2, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_p: float = 0.8,
    ) -> list[str]:
        """What is wrong with these values of ``Contrastive``'s options, one line each: checked with the
        rest of the config at start-up (``validate_config``) and again when the task is built."""
        problems = []
        if not 0 < temperature < math.inf:
            problems.append(f"task.temperature={temperature} must be positive, e.g. task.temperature=0.2")
        for key, width in (("projection_hidden", projection_hidden), ("projection_dim", projection_dim)):
            if width < 1:
                problems.append(f"task.{key}={width} must be at least 1")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            problems.append(
                f"task.crop_scale={list(crop_scale)} must be [low, high] fractions of the image area with "
                "0 < low <= high <= 1, e.g. [0.2, 1.0]"
            )
        if len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1] < math.inf:
            problems.append(
                f"task.crop_ratio={list(crop_ratio)} must be [low, high] aspect ratios (width / height) with "
                "0 < low <= high, e.g. [0.75, 1.33]"
            )
        for key, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0 <= value <= 1:
                problems.append(f"task.{key}={value} must be in [0, 1]: factors are drawn from 1 - {key} to 1 + {key}")
        if not 0 <= jitter_p <= 1:
            problems.append(f"task.jitter_p={jitter_p} must be a probability in [0, 1]")
        return problems

    def forward(self, images: Tensor) -> Tensor:
        """Projections ``(N, projection_dim)`` of images (not normalized)."""
        return self.projection(self.pool(self.encoder(images)))

    def task_loss(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """NT-Xent and partner accuracy on two fresh views of each image (drawn from ``generator`` if given)."""
        # Both views in one pass: batch norm normalizes them together.
        a, b = self(self.views(torch.cat([images, images]), generator)).chunk(2)
        return nt_xent(a, b, self.temperature)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        loss, accuracy = self.task_loss(images)
        self.log_train({"loss": loss, "acc": accuracy}, len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)
        loss, accuracy = self.task_loss(images, generator)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(images))
        self.log("val/acc", accuracy, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(images))
        return loss
