"""``python -m finetune encoder=PATH``: evaluate an exported encoder (or ``encoder=none``, the same
backbone with random weights) on a small labeled set, and test it: fine-tuned (``eval=finetune``), as
frozen features under a linear head (``eval=probe``) or by k nearest neighbours (``eval=knn``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from finetune.checks import CHECKS, check_encoder_fits_data, check_reuse
from finetune.classifier import Classifier
from finetune.knn import KNNClassifier
from finetune.schedule import FreezeSchedule
from pretrain.assemble import assemble
from pretrain.config.validate import validate_config
from pretrain.data.module import DataInfo
from pretrain.encoder_file.format import EncoderFile, load_encoder
from pretrain.encoders import Encoder
from pretrain.run.cli import command
from pretrain.run.files import sha256, write_json
from pretrain.run.resume import check_resumable, checkpoint_to_resume
from pretrain.run.text import printable
from pretrain.run.trainer import build_trainer


def _pretrained(cfg: DictConfig) -> EncoderFile | None:
    if cfg.encoder is None or str(cfg.encoder).lower() == "none":
        return None
    return load_encoder(cfg.encoder)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate as ``cfg`` says and write ``results.json`` (test accuracy, and loss) to ``run_dir``."""
    validate_config(cfg, "finetune", CHECKS)
    checkpoint = checkpoint_to_resume(cfg.resume, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    pretrained = _pretrained(cfg)
    datamodule = None
    if pretrained is not None:  # the encoder was trained on inputs normalized its way
        datamodule = instantiate(cfg.data, mean=pretrained.mean, std=pretrained.std)
        check_encoder_fits_data(pretrained.encoder, datamodule, cfg.encoder)
    encoder = None if pretrained is None else pretrained.encoder.train()
    datamodule, model = assemble(cfg, partial(_model, cfg, pretrained is not None), encoder, datamodule)
    info, encoder = datamodule.info, model.encoder
    faults = instantiate(cfg.faults)
    if cfg.eval == "knn":  # nothing to train: the test alone
        trainer = build_trainer(cfg.trainer, run_dir, faults=faults)
    else:
        if checkpoint is not None:
            check_resumable(checkpoint, model)
        trainer = build_trainer(cfg.trainer, run_dir, _schedule(cfg, pretrained is not None), faults=faults)
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint)
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    per_class = info.num_train / info.num_classes
    results = {
        "kind": "finetune",
        "eval": cfg.eval,
        "seed": cfg.seed,
        "test_acc": float(test["test/acc"]),
        **({"test_loss": float(test["test/loss"])} if "test/loss" in test else {}),
        "label_budget": info.num_train,
        "num_classes": info.num_classes,
        "labels_per_class": int(per_class) if per_class.is_integer() else per_class,  # the mean, if not even
        "num_test": len(datamodule.test_set.labels),
        "data": {"name": info.name, "classes": list(info.classes)},
        # encoder=none is random weights: trained from scratch by eval=finetune, kept as they are by probe and knn.
        "encoder_weights": "random" if pretrained is None else "pretrained",
        "encoder_trained": _encoder_trains(cfg, pretrained is not None),
        "encoder_file": None if pretrained is None else str(Path(cfg.encoder).resolve()),
        # The report tells encoders apart by content, and matches a transfer run to the
        # from-scratch runs of the same architecture.
        "encoder_sha256": None if pretrained is None else sha256(cfg.encoder),
        "pretext_task": None if pretrained is None else pretrained.pretext_task,
        "reused_blocks": len(encoder),  # the reused blocks alone
        "architecture": encoder.spec(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        if pretrained is None:
            source = "from scratch" if cfg.eval == "finetune" else "random weights"
        else:
            source = f"from {printable(pretrained.pretext_task)} encoder {cfg.encoder}"
        print(
            f"test accuracy {results['test_acc']:.4f} on {results['num_test']} test images ({source}, "
            f"eval={cfg.eval}, {info.num_train} labeled images); results in {run_dir / 'results.json'}"
        )
    return results


def _encoder_trains(cfg: DictConfig, pretrained: bool) -> bool:
    """Whether the encoder's weights change: fine-tuning from scratch, or unfreezing a reused one."""
    return cfg.eval == "finetune" and (not pretrained or cfg.schedule.unfreeze_epoch is not None)


def _model(cfg: DictConfig, pretrained: bool, encoder: Encoder, info: DataInfo) -> Classifier | KNNClassifier:
    """The model of ``cfg.eval`` on the reused blocks of ``encoder`` (``reuse_blocks``, default all)."""
    encoder = encoder.truncated(check_reuse(cfg, encoder))
    if cfg.eval == "knn":
        return KNNClassifier(encoder, info.num_classes, cfg.knn.k, cfg.knn.temperature, cfg.knn.pool)
    schedule = cfg.schedule
    return Classifier(
        encoder,
        instantiate(cfg.optimizer),
        info,
        encoder_lr_factor=schedule.encoder_lr_factor if pretrained else 1.0,
        dropout=cfg.head.dropout,
        pool=cfg.head.pool,
        lr_schedule=instantiate(cfg.lr_schedule),
    )


def _schedule(cfg: DictConfig, pretrained: bool) -> list[FreezeSchedule]:
    """The classifier's freezing schedule: a reused encoder is frozen first, then unfrozen as
    ``cfg.schedule`` says; a probe's encoder, random or not, stays frozen."""
    if cfg.eval == "probe":
        return [FreezeSchedule(None)]
    return [FreezeSchedule(cfg.schedule.unfreeze_epoch, cfg.schedule.unfreeze_top)] if pretrained else []


main = command("finetune", run, CHECKS)

if __name__ == "__main__":
    main()
