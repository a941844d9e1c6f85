"""``python tests/fault_injection.py STEP SIGNAL OVERRIDES...``: ``python -m pretrain OVERRIDES``,
except that the process sends itself SIGNAL (SIGKILL, SIGTERM) after training step STEP."""

from __future__ import annotations

import os
import runpy
import signal
import sys

import lightning as L

import pretrain.trainer


class SignalAt(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


if __name__ == "__main__":
    step, name, *overrides = sys.argv[1:]
    build = pretrain.trainer.build_trainer
    callback = SignalAt(int(step), getattr(signal, name))
    pretrain.trainer.build_trainer = lambda cfg, run_dir, callbacks=(), faults=None: build(
        cfg, run_dir, [*callbacks, callback], faults=faults
    )
    sys.argv = ["pretrain", *overrides]
    runpy.run_module("pretrain", run_name="__main__")
