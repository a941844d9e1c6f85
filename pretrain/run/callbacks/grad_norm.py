"""The size of the gradient, logged every ``log_every_n_steps`` steps, to decide on clipping."""

from __future__ import annotations

import lightning as L
from torch.nn.utils import get_total_norm
from torch.optim import Optimizer

from pretrain.internals import logs_this_step


class GradNormMonitor(L.Callback):
    """Logs ``train/grad_norm``: the 2-norm of all gradients together, before clipping.

    It is measured after backward (and after mixed precision's unscaling) and before the
    clipping of ``trainer.gradient_clip_val``, so it shows the size clipping would act on.
    It is computed on the gradients' device (Lightning's ``grad_norm`` reads each parameter's
    norm back to the host), and only on the steps the loggers write (every ``log_every_n_steps``). A task with several
    optimizers (a GAN) gets one curve per optimizer: ``train/grad_norm/optimizer_<i>``.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if not logs_this_step(trainer):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:  # no parameter has a gradient (everything frozen)
            return
        name = "train/grad_norm"
        if len(trainer.optimizers) > 1:
            name += f"/optimizer_{trainer.optimizers.index(optimizer)}"
        pl_module.log(name, get_total_norm(grads, norm_type=2.0), on_step=True, on_epoch=False)
