"""Fine-tuning's own checks: its config keys (``encoder``, ``reuse_blocks``, ``schedule``, ``head``, ``eval``,
``knn``), checked with the shared ones at start-up (``CHECKS``), and those that need the encoder file."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig

from pretrain.config.validate import Checks, ConfigError, at_least_one, positive, select
from pretrain.encoders import Encoder


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unfreezes_in_time(plain: dict[str, Any]) -> list[str]:
    epochs, unfreeze = select(plain, "trainer.max_epochs"), select(plain, "schedule.unfreeze_epoch")
    from_scratch = str(plain.get("encoder")).lower() == "none"  # nothing reused, so no schedule
    scheduled = plain.get("eval", "finetune") == "finetune"  # a probe never unfreezes; k-NN does not train
    unfreezes = scheduled and not from_scratch and isinstance(unfreeze, int)
    if unfreezes and isinstance(epochs, int) and unfreeze >= epochs >= 1:
        return [
            f"schedule.unfreeze_epoch={unfreeze} is not before the last epoch (trainer.max_epochs={epochs} trains "
            f"epochs 0..{epochs - 1}), so the reused blocks would never be unfrozen: use 0..{epochs - 1}, or null to "
            "keep them frozen throughout (a linear probe)"
        ]
    return []


CHECKS = Checks(
    types={
        "encoder": str | None,
        "reuse_blocks": int | None,
        "schedule.unfreeze_epoch": int | None,
        "schedule.unfreeze_top": int | None,
    },
    rules=[
        ("reuse_blocks", at_least_one, "must be at least 1, or null: every block of the encoder"),
        ("schedule.unfreeze_epoch", _non_negative, "must be an epoch >= 0, or null: never unfreeze"),
        ("schedule.unfreeze_top", at_least_one, "must be at least 1, or null: unfreeze every reused block"),
        (
            "schedule.encoder_lr_factor",
            positive,
            "must be positive (to keep blocks fixed, set schedule.unfreeze_epoch=null)",
        ),
        ("head.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("knn.k", at_least_one, "must be at least 1, e.g. knn.k=20"),
        ("knn.temperature", positive, "must be positive, e.g. knn.temperature=0.07"),
    ],
    choices={
        "eval": ("finetune", "probe", "knn"),
        "knn.pool": ("mean", "flatten"),
        "head.pool": ("flatten", "mean"),
    },
    across=_unfreezes_in_time,
)
"""What ``validate_config`` checks of ``python -m finetune``'s config beside the shared rules."""


def check_encoder_fits_data(encoder: Encoder, datamodule: L.LightningDataModule, source: str) -> None:
    """The encoder takes images of the data's shape (C, H, W), or a ConfigError says how to fix it.

    Runs before ``datamodule.setup`` where the data module can tell its image shape
    (``ImageDataModule.image_shape``); other data modules fail later, at their first batch."""
    if not hasattr(datamodule, "image_shape"):
        return
    want, have = tuple(encoder.input_shape), tuple(datamodule.image_shape())
    name = getattr(datamodule, "name", type(datamodule).__name__)
    if want == have:
        return
    if want[0] != have[0]:
        fix = (
            f"set data.grayscale={'true' if want[0] == 1 else 'false'} for folder data, or fine-tune on "
            "data of the encoder's kind"
        )
        what = f"{want[0]} channel(s), but data={name} has {have[0]}"
    else:
        fix = f"set data.image_size=[{want[1]},{want[2]}] for folder data, or fine-tune on data of the encoder's kind"
        what = f"{want[1]}x{want[2]} images, but data={name} has {have[1]}x{have[2]}"
    raise ConfigError(f"encoder {source} takes {what} (shapes {want} and {have}, C, H, W): {fix}")


def check_reuse(cfg: DictConfig, encoder: Encoder) -> int:
    """The number of blocks to reuse (``reuse_blocks``, default all), checked against the encoder
    and against ``schedule.unfreeze_top``."""
    depth = len(encoder)
    reuse = cfg.reuse_blocks if cfg.reuse_blocks is not None else depth
    if reuse > depth:
        raise ConfigError(
            f"reuse_blocks={reuse}, but the {encoder.arch} encoder has {depth} block(s) "
            f"({', '.join(encoder.block_names)}): choose 1..{depth}, or null for all"
        )
    top = cfg.schedule.unfreeze_top
    if top is not None and top > reuse:
        raise ConfigError(
            f"schedule.unfreeze_top={top}, but only {reuse} block(s) are reused: choose 1..{reuse}, or null for all"
        )
    return reuse
