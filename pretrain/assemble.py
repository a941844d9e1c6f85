"""The model a command trains, put together from its config: the data module, an encoder, the model on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pretrain.data.module import DataInfo
from pretrain.encoders import Encoder, build_encoder

Model = TypeVar("Model", bound=L.LightningModule)


def assemble(
    cfg: DictConfig,
    make_model: Callable[[Encoder, DataInfo], Model] | None = None,
    encoder: Encoder | None = None,
    datamodule: L.LightningDataModule | None = None,
) -> tuple[L.LightningDataModule, Model]:
    """The data module, set up for fitting, and the model: ``make_model(encoder, data info)``, or by default
    the pretext task of ``cfg.task`` with ``cfg.optimizer``.

    ``encoder``: the encoder to build on, else a new one of ``cfg.backbone`` with random weights for the
    data's input shape. ``datamodule``: that of ``cfg.data``, where the caller builds it its own way,
    else built here (for a pretext task, serving what the task trains on: images or pairs)."""
    if make_model is None:
        # Objects go in after instantiation: Hydra would turn the DataInfo dataclass into a config.
        make_task = instantiate(cfg.task, _partial_=True)
        if datamodule is None:
            datamodule = instantiate(cfg.data, batches=make_task.func.batches)

        def make_model(encoder: Encoder, info: DataInfo) -> L.LightningModule:
            return make_task(encoder=encoder, optimizer=instantiate(cfg.optimizer), data=info)

    if datamodule is None:
        datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    info = datamodule.info
    if encoder is None:
        encoder = build_encoder(input_shape=info.input_shape, **OmegaConf.to_container(cfg.backbone, resolve=True))
    return datamodule, make_model(encoder, info)
