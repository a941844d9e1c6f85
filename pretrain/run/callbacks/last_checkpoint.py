"""``checkpoints/last.ckpt``: the one checkpoint a run keeps, for resuming it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pretrain.internals import save_last_checkpoint
from pretrain.run.files import remove_stale_temporaries


class LastCheckpoint(ModelCheckpoint):
    """Keeps ``last.ckpt`` in ``dirpath`` current, and writes no other checkpoint.

    It is written every ``every_n_train_steps`` training steps (mid-epoch: the data order and
    random state are in it, so a resumed run continues exactly), at the end of the last epoch,
    and when the process receives SIGTERM (what SLURM sends before a time limit or a
    pre-emption): Lightning (2.6) then finishes the current batch and stops the run with
    ``SIGTERMException``; this saves the state at that batch before it exits. Without a step
    interval it is written at the end of every epoch instead. Not at every epoch end with
    one: a fine-tuning epoch of a few hundred images takes less time than writing the
    checkpoint (scripts/bench.py).

    A run starting or resuming in ``dirpath`` removes the temporary files that writers killed
    mid-write left there (``.last.ckpt.PID.tmp``, of processes no longer running).

    Plain ``ModelCheckpoint(save_top_k=0, save_last=True)`` refreshes ``last.ckpt`` at an
    epoch end only when it also saved a top-k checkpoint there, that is never; and it would
    write ``last-v1.ckpt`` beside a ``last.ckpt`` left by an interrupted run.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )
        self.step_interval = every_n_train_steps or 0
        self._state_key = super().state_key
        self.written: tuple[Path, int] | None = None
        """The checkpoint this process last wrote (or is writing, in the background) and its global step."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            remove_stale_temporaries(self.dirpath)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:  # see internals.OVERRIDDEN
        super()._save_checkpoint(trainer, filepath)  # raises, and records nothing, if the checkpoint was refused
        self.written = (Path(filepath), trainer.global_step)

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's builds a string from its settings at every call, and the Trainer asks for
        # it at every hook it calls (some 60 a step); the settings do not change after construction.
        return self._state_key

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Only the step interval writes here (this class sets no time interval and no monitor): ask
        # it first, before ModelCheckpoint's checks of the trainer's state, ~40 us a step on CPU.
        if self.step_interval >= 1 and trainer.global_step % self.step_interval == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # Not ModelCheckpoint's epoch and validation ends: without top-k checkpoints they only copy
    # the logged metrics and rewrite a last.ckpt already written at the same step.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = trainer.should_stop or trainer.current_epoch + 1 == trainer.max_epochs
        if self.step_interval < 1 or last_epoch:
            save_last_checkpoint(self, trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and save_last_checkpoint(self, trainer) and trainer.is_global_zero:
            print(f"SIGTERM: saved {self.last_model_path} at step {trainer.global_step}", file=sys.stderr)
