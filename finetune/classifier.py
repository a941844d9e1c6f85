"""The fine-tuned model: reused encoder blocks plus a new linear head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, Readout
from pretrain.tasks.base import OptimizerFactory
from pretrain.tasks.classifying import LinearClassification


class Classifier(LinearClassification):
    """A linear classifier on a (reused) encoder whose lower blocks can be frozen.

    The encoder's parameters form their own optimizer group from the start, at the base
    learning rate times ``encoder_lr_factor``; freezing only decides whether they get a
    gradient. A frozen block is in inference mode, as in Keras: its batch-norm statistics
    and dropout do not move while it is frozen.
    """

    name = "finetune"

    def __init__(
        self,
        encoder: Encoder,
        optimizer: OptimizerFactory,
        data: DataInfo,
        encoder_lr_factor: float = 1.0,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        pool: Readout = "flatten",
        lr_schedule: Callable[[Optimizer, int], LRScheduler] | None = None,
    ) -> None:
        super().__init__(encoder, optimizer, data, dropout, label_smoothing, pool)
        self.encoder_lr_factor = encoder_lr_factor
        self.lr_schedule = lr_schedule  # (optimizer, total steps) -> a scheduler stepped every step
        self.num_frozen = 0
        self.frozen_parameters: list[nn.Parameter] = []  # those of the lowest num_frozen blocks

    def freeze_lower(self, count: int) -> None:
        """Freeze the lowest ``count`` encoder blocks and make the others trainable."""
        self.num_frozen = count
        self.frozen_parameters = [p for block in self.encoder.blocks[:count] for p in block.parameters()]
        # Under DDP a parameter's requires_grad must not change once the model is wrapped
        # (its gradient would silently stop being averaged): there, frozen parameters keep
        # requires_grad and their gradients are dropped after each backward instead.
        distributed = self._trainer is not None and self.trainer.world_size > 1
        for i, block in enumerate(self.encoder.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= count or distributed)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for block in self.encoder.blocks[: getattr(self, "num_frozen", 0)]:
            block.eval()
        return self

    def on_after_backward(self) -> None:
        # Dropped here, not just before the step, so that callbacks that look at the gradient
        # (the gradient-norm monitor) and clipping see only the gradients that will be applied.
        for p in self.frozen_parameters:
            p.grad = None  # an optimizer skips a parameter without a gradient: no update, no decay

    def configure_optimizers(self) -> Any:
        base_lr = self.optimizer_factory.keywords["lr"]
        groups: list[dict[str, Any]] = [
            {"params": list(self.head.parameters()), "name": "head"},
            {"params": list(self.encoder.parameters()), "lr": base_lr * self.encoder_lr_factor, "name": "encoder"},
        ]
        optimizer = self.optimizer_factory(groups)
        if self.lr_schedule is None:
            return optimizer
        scheduler = self.lr_schedule(optimizer, self.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_steps(self) -> int:
        """The optimizer steps of the whole run. Not ``trainer.estimated_stepping_batches``: called
        here, on a resumed run, it sets up the training data before the checkpoint's position in the
        epoch is restored, and the run no longer continues exactly (Lightning 2.6)."""
        trainer = self.trainer
        batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        if trainer.max_epochs is None or trainer.max_epochs < 0:  # the run is bounded by max_steps alone
            return trainer.max_steps
        steps = max(1, trainer.max_epochs * batches // trainer.accumulate_grad_batches)
        return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps
