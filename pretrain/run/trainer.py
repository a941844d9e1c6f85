"""The Lightning Trainer both entry points use: loggers, checkpoints and monitors in the run folder."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler
from omegaconf import DictConfig, open_dict

from pretrain.config.validate import lightning_refusals
from pretrain.run.callbacks.channels_last import ChannelsLast
from pretrain.run.callbacks.grad_norm import GradNormMonitor
from pretrain.run.csv_log import ContinuingCSVLogger
from pretrain.run.faults import FaultTolerance

# Lightning warnings that are expected here, not problems: frozen blocks are in eval mode on
# purpose, a few-label run has no validation set, and short epochs log less often than
# log_every_n_steps; and last.ckpt of a manually optimized task (the GAN) holds the state after
# its optimizer steps, which is the one a resumed run continues from. And Lightning 2.6's own use
# of an API that torch 2.14 deprecates: nothing for a user to do about it.
for message in (
    r"Found \d+ module\(s\) in eval mode",
    r"Total length of `list` across ranks is zero",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
):
    warnings.filterwarnings("ignore", message=message)


class _NoAdvertisement(logging.Filter):
    """Lightning 2.6 advertises its cloud logger every time a Trainer is built: 30 lines in a sweep."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision, with ``mixed`` meaning: ``bf16-mixed`` on a GPU that has bfloat16
    (Ampere and newer), ``16-mixed`` (float16 with loss scaling) on older GPUs, ``32-true`` on CPU."""
    if precision != "mixed":
        return precision
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"


def skip_gpu_probe_without_gpus() -> None:
    """Check for CUDA with the CUDA runtime, not NVML, on a machine without a GPU.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import, so that checking for a GPU
    does not initialize CUDA in a process that later forks. Without a GPU that check loads
    NVML afresh at every call, and torch's Adam checks at every step: 0.1 ms, a tenth of a
    small model's step on CPU (scripts/bench.py). With no GPU there is no CUDA to protect.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


class NoProfiler(PassThroughProfiler):
    """Lightning's "no profiler" (``profiler: null``) without its cost. The Trainer wraps every hook
    it calls on every callback in ``profiler.profile(name)``, some 60 a step, and even Lightning's
    pass-through profiler makes a new generator-based context for each, ~3 us on CPU; this one hands
    out one shared no-op context."""

    _NO_OP = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._NO_OP


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without ``v_num`` (the loggers' version is a fixed folder name here, ``_csv``),
    whose training line is redrawn at most every ``mininterval`` seconds (tqdm's, 0.1 s)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def init_train_tqdm(self) -> Tqdm:
        return throttled(super().init_train_tqdm())


def throttled(bar: Tqdm) -> Tqdm:
    """``bar`` with its explicit redraws (Lightning asks for four an epoch, whatever ``refresh_rate`` says)
    held to one per ``bar.mininterval``: over epochs of a few steps they cost a tenth of a fine-tuning run.
    What a skipped redraw would show is kept, and ``close`` draws the last state."""
    redraw = bar.refresh

    def refresh(*args: Any, **kwargs: Any) -> Any:
        now = time.time()  # tqdm's own clock for last_print_t
        if now - bar.last_print_t >= bar.mininterval:
            bar.last_print_t = now
            return redraw(*args, **kwargs)
        return None

    bar.refresh = refresh
    return bar


class DataSummary(Callback):
    """Says once, as training (or a test alone) starts, what data the run uses: after every check, so
    that a refused run prints its one error and nothing else."""

    def __init__(self) -> None:
        self.said = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def _say(self, trainer: L.Trainer) -> None:
        describe = getattr(trainer.datamodule, "describe", None)
        if not self.said and trainer.is_global_zero and describe is not None:
            print(describe(), flush=True)
        self.said = True


def build_trainer(
    trainer_cfg: DictConfig, run_dir: Path, callbacks: Sequence[Callback] = (), faults: FaultTolerance | None = None
) -> L.Trainer:
    """A Trainer from ``conf/trainer``, logging to ``run_dir/tensorboard`` and ``run_dir/csv``
    and keeping ``run_dir/checkpoints/last.ckpt`` up to date for resuming (``conf/faults``)."""
    loggers = [
        TensorBoardLogger(save_dir=run_dir, name="", version="tensorboard", default_hp_metric=False),
        ContinuingCSVLogger(save_dir=run_dir, name="", version="csv"),
    ]
    faults = faults or FaultTolerance()
    skip_gpu_probe_without_gpus()
    trainer_cfg = trainer_cfg.copy()
    with open_dict(trainer_cfg):  # ours, not a Trainer argument
        channels_last = trainer_cfg.pop("channels_last", False)
    with lightning_refusals("trainer"):
        return instantiate(
            trainer_cfg,
            default_root_dir=str(run_dir),
            precision=resolve_precision(str(trainer_cfg.precision), str(trainer_cfg.accelerator)),
            logger=loggers,
            plugins=faults.plugins(),
            profiler=trainer_cfg.get("profiler") or NoProfiler(),
            callbacks=[
                *faults.callbacks(run_dir),
                LearningRateMonitor(logging_interval="epoch"),
                DataSummary(),
                GradNormMonitor(),
                *([ChannelsLast()] if channels_last else []),
                # Refreshed as often as the logs are written: the values it shows change no more often,
                # and a refresh per step costs a tenth of a small model's step (scripts/bench.py).
                *([ProgressBar(refresh_rate=trainer_cfg.log_every_n_steps)] if trainer_cfg.enable_progress_bar else []),
                *callbacks,
            ],
        )
