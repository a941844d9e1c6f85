"""Same person or not: a shared encoder embeds both images of a pair, a head decides.

Pairs come from the data module (``batches = "pairs"``: half same-class, half not, drawn
afresh each epoch from the identity labels; see ``data.PairBatches``). The head reads
``|a - b|`` and ``a * b`` of the two pooled embeddings and is trained with binary
cross-entropy; a contrastive loss on the normalized embeddings can be added. The logged
``val/acc`` is verification accuracy on pairs of the validation people, who are never
seen in training when the data splits by class (``data.split_by=class``, the faces default).
For images without identities, ``contrastive`` makes each pair from two augmented views of one image.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, GlobalPool, feature_dim
from pretrain.tasks.base import OptimizerFactory
from pretrain.tasks.classifying import ClassifyingTask


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float) -> Tensor:
    """Hadsell et al.: pull same pairs together, push other pairs at least ``margin`` apart
    (on L2-normalized embeddings, so distances lie in [0, 2])."""
    distance = (F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1)
    same = same.to(distance.dtype)
    return (same * distance.pow(2) + (1 - same) * F.relu(margin - distance).pow(2)).mean()


class Siamese(ClassifyingTask):
    name = "siamese"
    batches = "pairs"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        hidden: int = 64,
        contrastive_weight: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__(encoder, optimizer, data, BinaryAccuracy)
        width = feature_dim(encoder.block_shapes()[-1])
        self.pool = GlobalPool()
        self.head = (
            nn.Sequential(nn.Linear(2 * width, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            if hidden
            else nn.Linear(2 * width, 1)
        )
        self.contrastive_weight, self.margin = contrastive_weight, margin

    def embed(self, images: Tensor) -> Tensor:
        return self.pool(self.encoder(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Same-class logits ``(B,)`` of a pair batch ``(2B, C, H, W)``, and the two embeddings."""
        a, b = self.embed(images).chunk(2)  # one pass: batch norm sees both halves together
        return self.head(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1), a, b

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if stage == "fit" and getattr(datamodule, "split_by", "class") != "class" and len(datamodule.val_set.labels):
            warnings.warn(
                "siamese validation pairs come from people also seen in training: set data.split_by=class "
                "to measure verification on unseen people",
                stacklevel=1,
            )

    def step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor, int]:
        images, same = batch
        if images.shape[0] != 2 * same.shape[0]:
            raise ValueError(
                "task=siamese needs pair batches (data batches=pairs): run it through `python -m pretrain`"
            )
        logits, a, b = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype))
        if self.contrastive_weight:
            loss = loss + self.contrastive_weight * contrastive_loss(a, b, same, self.margin)
        return loss, (logits > 0).long(), same.long(), len(same)
