"""Freezing as a schedule: reused blocks frozen first, then the top ones unfrozen."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer


class FreezeSchedule(BaseFinetuning):
    """All reused blocks frozen for epochs ``[0, unfreeze_epoch)``; from then on the top
    ``unfreeze_top`` of them (all if None) train, at the encoder group's lower learning rate.

    ``unfreeze_epoch=None`` never unfreezes (a linear probe on frozen features). The state
    is a function of the epoch alone, so a resumed run picks it up where it was. Unlike
    Lightning's ``BackboneFinetuning`` no parameter group is added mid-training, which
    keeps learning-rate schedulers and DDP working.
    """

    def __init__(self, unfreeze_epoch: int | None, unfreeze_top: int | None = None) -> None:
        super().__init__()
        self.unfreeze_epoch = unfreeze_epoch
        self.unfreeze_top = unfreeze_top

    def frozen_blocks(self, epoch: int, reused: int) -> int:
        if self.unfreeze_epoch is None or epoch < self.unfreeze_epoch:
            return reused
        return 0 if self.unfreeze_top is None else max(reused - self.unfreeze_top, 0)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        pl_module.freeze_lower(self.frozen_blocks(0, len(pl_module.encoder)))

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        pl_module.freeze_lower(self.frozen_blocks(epoch, len(pl_module.encoder)))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed in the middle of an epoch skips on_train_epoch_start for it: set that epoch's state.
        pl_module.freeze_lower(self.frozen_blocks(trainer.current_epoch, len(pl_module.encoder)))
