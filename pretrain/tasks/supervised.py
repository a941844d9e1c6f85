"""Supervised pretraining on an auxiliary labeled task (the seed's "model A")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from pretrain.data import DataInfo
from pretrain.encoders import Encoder, GlobalPool, feature_dim
from pretrain.tasks.base import OptimizerFactory, PretextTask


class Supervised(PretextTask):
    """Encoder plus a linear classification head, trained with cross-entropy."""

    name = "supervised"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(encoder, optimizer, data)
        if data.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes; the data has {list(data.classes)}")
        self.label_smoothing = label_smoothing
        self.head = nn.Sequential(
            GlobalPool(), nn.Dropout(dropout), nn.Linear(feature_dim(encoder.block_shapes()[-1]), data.num_classes)
        )
        # One metric per stage: each accumulates over its own epoch.
        self.accuracy = nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(data.num_classes, average="micro") for s in ("train", "val", "test")}
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy(logits, labels)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, sync_dist=not train)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=not train)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")
