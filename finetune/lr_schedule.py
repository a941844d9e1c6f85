"""The learning rate over a fine-tuning run, step by step: the choices of ``conf/lr_schedule``.

Each is called with the optimizer and the run's number of optimizer steps, and scales every
parameter group's own rate (the reused blocks' lower rate too).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """A linear warm-up over ``warmup_steps``, then half a cosine down to zero at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
