"""Stop a run whose loss or weights became NaN or infinite, writing no checkpoint or encoder of them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from pretrain.internals import logged_step
from pretrain.run.callbacks.last_checkpoint import LastCheckpoint

REMEDIES = (
    "Likely remedies: a lower learning rate (optimizer.lr, now {lr}); gradient clipping by norm "
    "(trainer.gradient_clip_val=1.0 trainer.gradient_clip_algorithm=norm, now {clip}); with 16-bit precision, "
    "trainer.precision=32-true."
)
LOADED = (
    "These weights were loaded, not trained (from the encoder file or the checkpoint the run started from): "
    "no setting of this run can help; use a file with finite weights."
)


class NonFiniteLossError(RuntimeError):
    """The training or validation loss, or a weight, became NaN or infinite."""


def some(names: list[str], shown: int = 3) -> str:
    """``names`` for a message: the first ``shown`` of them, and how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def nonfinite(tensors: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors in ``tensors`` (a state dict) that hold a NaN or an
    infinity, with one host sync for all of them."""
    named = [(k, t) for k, t in tensors.items() if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [k for (k, _), ok in zip(named, finite, strict=True) if not ok]


class FiniteLossGuard(L.Callback):
    """Stops the run when its training loss, its validation loss or its weights are NaN or infinite.

    The training loss is watched without a host sync per step: each step keeps a reference to
    its loss, detached (no operation on the device); the host reads them, stacked, every
    ``every_n_steps`` batches, before every checkpoint is written, after every validation and at
    the end of training. So the run stops at most ``every_n_steps`` steps after the loss went
    bad. The steps in between are wasted, which is the price of not stalling the device every
    step (Lightning's ``detect_anomaly`` checks every operation and is far slower).

    The weights (parameters and buffers, such as batch-norm statistics) are checked when the
    run starts, before every checkpoint is written and at the end of training, before the
    encoder is exported; every ``val/...loss...`` value after every validation. A checkpoint
    is thus written only of finite weights, after finite losses, and none after a bad
    validation; a refused write leaves the previous checkpoint in place. Weights can still be
    finite yet so large that the next loss they give is not: the error message says whether
    the checkpoint kept is from before the fault, or holds the very weights that caused it
    (resuming that one would stop again).

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
        self._start_step = 0
        # The global step of the weights last checkpointed (or resumed from) until a loss computed from them passes.
        self._untested: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._device, self._losses, self._seen = None, [], []
        self._start_step = trainer.global_step
        self._untested = trainer.global_step if trainer.ckpt_path else None
        self._check_weights(trainer, pl_module, at_start=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            # Kept, not copied into a buffer: a copy is two operations a step, ~70 us on CPU in a run.
            self._losses.append(loss.detach())
            self._device = loss.device
            # The step as the loggers count it (Lightning's own counter; global_step counts optimizer steps).
            self._seen.append((logged_step(trainer), trainer.current_epoch))
        if len(self._seen) == self.every_n_steps:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Raising here aborts the write: the previous checkpoint stays.
        self.check(trainer)
        self._check_weights(trainer, pl_module)
        self._untested = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.check(trainer)  # a bad training loss before it is the first fault
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and "loss" in k}
        bad = ", ".join(f"{k} = {v}" for k, v in values.items() if not math.isfinite(v))
        if self._on_any_process(trainer, pl_module.device, bool(bad)):
            self._stop(
                trainer,
                f"the validation loss became {bad or 'nan or inf (on another process)'} after optimizer step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}); the run stopped there",
                source=trainer.global_step,
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
        self._check_weights(trainer, pl_module)

    def check(self, trainer: L.Trainer) -> None:
        """Raise ``NonFiniteLossError`` if a training loss so far was NaN or infinite (one host sync;
        under DDP one all-reduce too, so that every process stops at the same step)."""
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
            if losses:
                self._untested = None  # the first of them came from the weights last checkpointed
            return
        value = float(values[index]) if index >= 0 else "nan or inf (on another process)"
        self._stop(
            trainer,
            f"the training loss became {value} at step {step} (epoch {epoch}); "
            f"the run stopped at step {logged_step(trainer)} (the loss is checked every "
            f"{self.every_n_steps} steps, faults.check_finite_every_n_steps, and before every checkpoint)",
            source=self._untested if index == 0 else None,
        )

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule, at_start: bool = False) -> None:
        bad = nonfinite(pl_module.state_dict())
        if not self._on_any_process(trainer, pl_module.device, bool(bad)):
            return
        names = some(bad) or "on another process"
        if at_start:
            fault = (
                f"the weights the run started with hold NaN or infinite values ({names}); "
                "the run stopped before its first step"
            )
        else:
            fault = (
                f"the weights became NaN or infinite ({names}) after optimizer step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); the run stopped there"
            )
        self._stop(trainer, fault, source=trainer.global_step, loaded=at_start)

    @staticmethod
    def _on_any_process(trainer: L.Trainer, device: torch.device, flag: bool) -> bool:
        return bool(trainer.strategy.reduce(torch.tensor(int(flag), device=device), reduce_op="max"))

    def _stop(self, trainer: L.Trainer, fault: str, source: int | None, loaded: bool = False) -> NoReturn:
        """Raise ``NonFiniteLossError`` for ``fault``, from the weights of global step ``source`` (None: later ones)."""
        kept = self._kept(trainer)
        if kept is None:
            checkpoint = "No checkpoint had been written yet"
        else:
            checkpoint = f"The last checkpoint, {kept[0]} (after optimizer step {kept[1]}), " + (
                "holds the weights that gave it: resuming it would stop again"
                if kept[1] == source
                else "is from before it and was kept"
            )
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        remedies = LOADED if loaded else REMEDIES.format(lr=lr, clip=trainer.gradient_clip_val or "off")
        raise NonFiniteLossError(f"{fault}. {checkpoint}; no encoder or results were written. {remedies}")

    def _kept(self, trainer: L.Trainer) -> tuple[Path, int] | None:
        """The last checkpoint of this run that is on disk, and its global step."""
        # A write may still be under way in the background (AsyncCheckpointIO): wait for it.
        trainer.strategy.checkpoint_io.teardown()
        writer = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        kept = writer.written if writer is not None else None
        if kept is None and trainer.ckpt_path:
            kept = (Path(trainer.ckpt_path), self._start_step)
        return kept if kept is not None and kept[0].is_file() else None
