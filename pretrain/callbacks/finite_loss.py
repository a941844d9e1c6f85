"""Stop a run whose training loss became NaN or infinite, keeping the last good checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from pretrain.callbacks.last_checkpoint import LastCheckpoint


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Watches the loss each training step returns, without a host sync per step.

    Each step keeps a reference to its loss, detached (no operation on the device); the host
    reads them, stacked, every ``every_n_steps`` batches, before every checkpoint is written
    and at the end of training. So the run stops at most ``every_n_steps`` steps after the
    loss went bad, never writes a checkpoint or an encoder from after that point, and the last
    checkpoint it kept is from before it. The steps in between are wasted, which is the price
    of not stalling the device every step (Lightning's ``detect_anomaly`` checks every
    operation and is far slower).

    A task under manual optimization must return its loss (or a dict with ``loss``) from
    ``training_step`` to be watched.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, not {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._device: torch.device | None = None  # where the losses are; None: none seen yet
        self._losses: list[Tensor] = []  # the losses since the last check ...
        self._seen: list[tuple[int, int]] = []  # ... and the (step, epoch) of each

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._device, self._losses, self._seen = None, [], []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            # Kept, not copied into a buffer: a copy is two operations a step, ~70 us on CPU in a run.
            self._losses.append(loss.detach())
            self._device = loss.device
            # The step as the loggers count it (Lightning's own counter; global_step counts optimizer steps).
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
            self._seen.append((step, trainer.current_epoch))
        if len(self._seen) == self.every_n_steps:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)  # raising here aborts the write: the previous checkpoint stays

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise ``NonFiniteLossError`` if a loss so far was NaN or infinite (one host sync; under
        DDP one all-reduce too, so that every process stops at the same step)."""
        if self._device is None:
            return
        losses, self._losses = self._losses, []
        seen, self._seen = self._seen, []
        index = -1
        if losses:
            # A NaN or inf anywhere in a non-scalar loss makes its sum NaN or inf too.
            values = torch.stack([x if x.ndim == 0 else x.sum() for x in losses]).float()
            bad = (~torch.isfinite(values)).nonzero()
            index = int(bad[0]) if len(bad) else -1
        local = torch.tensor(seen[index] if index >= 0 else (-1, -1), device=self._device)
        step, epoch = (int(v) for v in trainer.strategy.reduce(local, reduce_op="max").tolist())
        if step < 0:
            return
        value = float(values[index]) if index >= 0 else "nan or inf (on another process)"
        kept = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        # Not "is the file there": the last write may still be under way in the background
        # (AsyncCheckpointIO); the run's teardown waits for it before this error reaches the user.
        if kept is not None and kept.last_model_path:
            saved = getattr(kept, "_last_global_step_saved", 0)  # 0: not saved by this process (resumed)
            after = f" (after optimizer step {saved})" if saved else ""
            checkpoint = f"The last checkpoint, {kept.last_model_path}{after}, is from before it and was kept"
        else:
            checkpoint = "No checkpoint had been written yet"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        clip = trainer.gradient_clip_val or "off"
        raise NonFiniteLossError(
            f"the training loss became {value} at step {step} (epoch {epoch}); "
            f"the run stopped at step {trainer.fit_loop.epoch_loop._batches_that_stepped} (the loss is checked every "
            f"{self.every_n_steps} steps, faults.check_finite_every_n_steps, and before every checkpoint). "
            f"{checkpoint}; no encoder or results were written. Likely remedies: a lower learning rate "
            f"(optimizer.lr, now {lr}); gradient clipping by norm (trainer.gradient_clip_val=1.0 "
            f"trainer.gradient_clip_algorithm=norm, now {clip}); with 16-bit precision, trainer.precision=32-true."
        )
