"""``python tests/fault_injection.py STEP FAULT OVERRIDES...``: ``python -m pretrain OVERRIDES``,
except that after training step STEP the process sends itself FAULT (SIGKILL, SIGTERM), or with
FAULT=ENOSPC finds the disk full: every later checkpoint write fails as ``write`` does then."""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys

import lightning as L
import torch

import pretrain.run.trainer


class SignalAt(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def full_disk(obj: object, f) -> None:
    """``torch.save`` on a full disk: the first bytes go through, then ``write`` fails."""
    f.write(b"PK\x03\x04 the first bytes")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFullAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            torch.save = full_disk


if __name__ == "__main__":
    step, name, *overrides = sys.argv[1:]
    build = pretrain.run.trainer.build_trainer
    callback = DiskFullAt(int(step)) if name == "ENOSPC" else SignalAt(int(step), getattr(signal, name))
    pretrain.run.trainer.build_trainer = lambda cfg, run_dir, callbacks=(), faults=None: build(
        cfg, run_dir, [*callbacks, callback], faults=faults
    )
    sys.argv = ["pretrain", *overrides]
    runpy.run_module("pretrain", run_name="__main__")
