"""How a run survives faults: the checkpoint it keeps, its random state, and its loss guard."""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from pretrain.run.callbacks.finite_loss import FiniteLossGuard
from pretrain.run.callbacks.last_checkpoint import LastCheckpoint
from pretrain.run.callbacks.random_state import RandomState
from pretrain.run.files import AtomicCheckpointIO


class FaultTolerance:
    """What ``conf/faults`` configures; ``build_trainer`` adds its callbacks and plugins.

    - ``checkpoints/last.ckpt`` is written (atomically) every ``checkpoint_every_n_steps``
      training steps (None: at every epoch end instead), at the last epoch end and on SIGTERM; it holds
      the data position and the random state, so ``resume=RUN`` continues the run exactly.
    - a NaN or infinite training loss stops the run within ``check_finite_every_n_steps``
      steps, a NaN or infinite weight or validation loss at the next checkpoint, validation or
      training end (``FiniteLossGuard``): no checkpoint or encoder of them is written.
    - in a SLURM job, Lightning requeues the job itself (SIGUSR1) only with ``lightning_slurm_requeue``.
    """

    def __init__(
        self,
        checkpoint_every_n_steps: int | None = 1000,
        check_finite_every_n_steps: int = 10,
        lightning_slurm_requeue: bool = False,
    ) -> None:
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self.lightning_slurm_requeue = lightning_slurm_requeue

    def callbacks(self, run_dir: Path) -> list[Callback]:
        return [
            FiniteLossGuard(self.check_finite_every_n_steps),
            RandomState(),
            LastCheckpoint(Path(run_dir) / "checkpoints", self.checkpoint_every_n_steps),
        ]

    def plugins(self) -> list:
        # Written in a background thread from a copy of the state: a ResNet's checkpoint (weights and
        # Adam's moments, 130 MB) takes longer to write than a hundred GPU steps (scripts/bench.py).
        plugins = [AsyncCheckpointIO(AtomicCheckpointIO())]
        if SLURMEnvironment.detect():  # the environment Lightning would choose, with its requeue as configured
            plugins.append(SLURMEnvironment(auto_requeue=self.lightning_slurm_requeue))
        return plugins
