"""Supervised pretraining on an auxiliary labeled task (Géron's "model A")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, Readout, readout
from pretrain.tasks.base import OptimizerFactory
from pretrain.tasks.classifying import ClassifyingTask


class Supervised(ClassifyingTask):
    """Encoder plus a linear classification head on its ``pool`` readout (``encoders.readout``),
    trained with cross-entropy."""

    name = "supervised"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        pool: Readout = "flatten",
    ) -> None:
        if data.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes; the data has {list(data.classes)}")
        super().__init__(encoder, optimizer, data, lambda: MulticlassAccuracy(data.num_classes, average="micro"))
        self.label_smoothing = label_smoothing
        features, width = readout(pool, encoder.block_shapes()[-1])
        self.head = nn.Sequential(features, nn.Dropout(dropout), nn.Linear(width, data.num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor, int]:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        return loss, logits.argmax(1), labels, len(labels)
