"""What the tasks that classify share: one step for training, validation and test, and its logging; and
the linear classifier on an encoder that supervised pretraining and fine-tuning both train."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, Readout, readout
from pretrain.tasks.base import OptimizerFactory, PretextTask


class ClassifyingTask(PretextTask):
    """A task whose ``step(batch, stage)`` returns ``(loss, predictions, targets, batch_size)``.

    It logs ``STAGE/loss`` and ``STAGE/acc``. Training accuracy is a plain tensor through
    ``log_train`` (no per-step metric object: see ``PretextTask.log_train``); validation and
    test accuracy come from one torchmetrics metric per stage, exact under DDP.
    """

    def __init__(
        self, encoder: Encoder, optimizer: OptimizerFactory, data: DataInfo, accuracy: Callable[[], Metric]
    ) -> None:
        super().__init__(encoder, optimizer, data)
        self.accuracy = nn.ModuleDict({f"{s}_acc": accuracy() for s in ("val", "test")})

    def step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor, int]:
        raise NotImplementedError

    def _logged_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        loss, predictions, targets, batch_size = self.step(batch, stage)
        if stage == "train":
            self.log_train({"loss": loss, "acc": (predictions == targets).float().mean()}, batch_size)
        else:
            accuracy = self.accuracy[f"{stage}_acc"]
            accuracy(predictions, targets)
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch_size)
            self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._logged_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._logged_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._logged_step(batch, "test")


class LinearClassification(ClassifyingTask):
    """Encoder plus a linear classification head on its ``pool`` readout (``encoders.readout``),
    trained with cross-entropy."""

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
