"""What every pretext task shares: the encoder it trains, its optimizer, and its export facts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
from torch.optim import Optimizer

from pretrain.data import DataInfo
from pretrain.encoders import Encoder

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
"""``functools.partial(torch.optim.X, lr=..., ...)``, as Hydra builds it from ``conf/optimizer``."""


class PretextTask(L.LightningModule):
    """A LightningModule around an ``Encoder``; subclasses own their heads and their loss.

    Subclasses log ``train/loss`` (and ``val/loss`` where they validate) and set ``name``.
    """

    name: str = ""

    def __init__(self, encoder: Encoder, optimizer: OptimizerFactory, data: DataInfo) -> None:
        super().__init__()
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.data_info = data

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(p for p in self.parameters() if p.requires_grad)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain values only, so `python -m pretrain.export` can read it with weights_only=True.
        checkpoint["pretext_encoder"] = {
            **self.encoder.spec(),
            "task": self.name,
            "mean": list(self.data_info.mean),
            "std": list(self.data_info.std),
            "data": self.data_info.name,
            "classes": list(self.data_info.classes),
        }
