"""What every pretext task shares: the encoder it trains, its optimizer, and its export facts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from torch.optim import Optimizer

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder
from pretrain.internals import ddp_arguments, logged_step, logs_this_step
from pretrain.run.files import write_image
from pretrain.tasks.figures import labeled_grid

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
"""``functools.partial(torch.optim.X, lr=..., ...)``, as Hydra builds it from ``conf/optimizer``."""


class PretextTask(L.LightningModule):
    """A LightningModule around an ``Encoder``; subclasses own their heads and their loss.

    Subclasses log ``train/loss`` with ``log_train`` (and ``val/loss`` where they validate) and
    set ``name``; one that overrides ``on_train_epoch_end`` calls ``super().on_train_epoch_end()``.
    """

    name: str = ""
    batches: str = "images"
    """What the task trains on: ``images`` (image, label) batches, or ``pairs`` (see ``data.PairBatches``)."""

    def __init__(self, encoder: Encoder, optimizer: OptimizerFactory, data: DataInfo) -> None:
        super().__init__()
        self.encoder = encoder
        self.optimizer_factory = optimizer
        self.data_info = data
        self._epoch_sums: dict[str, tuple[Tensor, int]] = {}  # name: (sum of value * batch size, images)
        self.epoch_means: dict[str, float] = {}  # the last training epoch's train/NAME_epoch

    @staticmethod
    def value_problems() -> list[str]:
        """What is wrong with the values of the task's options (its config node's values, already of the
        right types), one line each; ``validate_config`` passes those the signature names. A task with
        rules on its values overrides this, and checks them when it is built too."""
        return []

    def log_train(self, values: Mapping[str, Tensor], batch_size: int) -> None:
        """Log training values as ``train/NAME_step``, on the steps the loggers write (every
        ``log_every_n_steps``), and ``train/NAME_epoch``, their mean over the epoch's images
        (also kept in ``epoch_means`` after each epoch).

        The names of Lightning's ``self.log(on_step=True, on_epoch=True)``, which costs about a
        millisecond per call and value on CPU, more than a small model's whole step
        (scripts/bench.py); this adds one in-place sum per value and step, no host sync, and
        hands the epoch means to the loggers directly: through ``self.log`` they cost 2 to 3 ms
        an epoch, a tenth of a fine-tuning epoch of 7 steps.
        """
        for name, value in values.items():
            value = value.detach().float()
            total, images = self._epoch_sums.get(name, (None, 0))
            total = value * batch_size if total is None else total.add_(value, alpha=batch_size)
            self._epoch_sums[name] = (total, images + batch_size)
        if logs_this_step(self.trainer):
            self.log_dict({f"train/{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        means = {f"train/{k}_epoch": float(total / images) for k, (total, images) in self._epoch_sums.items()}
        self._epoch_sums = {}
        if means:
            self.epoch_means = means
            # The step and the epoch column as Lightning's own epoch logs have them.
            step = logged_step(self.trainer)
            for logger in self.loggers:
                logger.log_metrics({**means, "epoch": self.current_epoch}, step=step)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(p for p in self.parameters() if p.requires_grad)

    def exported_encoder(self) -> Encoder:
        """The encoder as its file stores it (plain weights; a task that reparametrizes them overrides this)."""
        return self.encoder

    def save_figure(self, name: str, rows: Sequence[tuple[str, Tensor]], title: str = "") -> None:
        """Write labeled rows of 0..1 images (``figures.labeled_grid``) as ``name`` in the run folder
        (the Trainer's ``default_root_dir``); rank 0 only."""
        if self.trainer.is_global_zero:
            write_image(Path(self.trainer.default_root_dir) / name, labeled_grid(rows, title), padding=0)

    def require_unused_parameters(self, why: str) -> None:
        """Fail clearly where DDP would fail obscurely: a step that leaves parameters unused needs
        ``find_unused_parameters``."""
        ddp_kwargs = ddp_arguments(self.trainer.strategy)
        if self.trainer.world_size > 1 and not ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(f"task {self.name}: {why}; under DDP set trainer.strategy=ddp_find_unused_parameters_true")

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
        exported = self.exported_encoder()
        if exported is not self.encoder:  # stored reparametrized: keep the plain weights its file needs
            checkpoint["pretext_encoder"]["state_dict"] = {
                k: v.detach().cpu() for k, v in exported.state_dict().items()
            }
