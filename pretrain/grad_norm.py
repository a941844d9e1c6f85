"""The size of the gradient, logged every ``log_every_n_steps`` steps, to decide on clipping."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import grad_norm
from torch.optim import Optimizer


class GradNormMonitor(L.Callback):
    """Logs ``train/grad_norm``: the 2-norm of all gradients together, before clipping.

    It is measured after backward (and after mixed precision's unscaling) and before the
    clipping of ``trainer.gradient_clip_val``, so it shows the size clipping would act on.
    Computing it reads every gradient's norm back to the host, so it runs only on the steps
    the loggers write (every ``log_every_n_steps``), not on every step. A task with several
    optimizers (a GAN) gets one curve per optimizer: ``train/grad_norm/optimizer_<i>``.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        # The same test as Lightning's own monitors (LearningRateMonitor, DeviceStatsMonitor).
        if not trainer._logger_connector.should_update_logs:
            return
        norms = grad_norm(pl_module, norm_type=2)
        if not norms:  # no parameter has a gradient (everything frozen)
            return
        name = "train/grad_norm"
        if len(trainer.optimizers) > 1:
            name += f"/optimizer_{trainer.optimizers.index(optimizer)}"
        pl_module.log(name, norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)
