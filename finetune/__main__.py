"""``python -m finetune encoder=PATH``: fine-tune an exported encoder (or ``encoder=none``,
the same backbone from random weights) on a small labeled set and test it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from finetune.classifier import Classifier
from finetune.schedule import FreezeSchedule
from pretrain.cli import command
from pretrain.encoders import build_encoder
from pretrain.export import EncoderFile, load_encoder
from pretrain.files import sha256, write_json
from pretrain.resume import check_resumable, checkpoint_to_resume
from pretrain.text import printable
from pretrain.trainer import build_trainer
from pretrain.validate import check_encoder_fits_data, check_reuse, validate_config


def _pretrained(cfg: DictConfig) -> EncoderFile | None:
    if cfg.encoder is None or str(cfg.encoder).lower() == "none":
        return None
    return load_encoder(cfg.encoder)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says and write ``results.json`` (test accuracy and loss) to ``run_dir``."""
    validate_config(cfg, "finetune")
    checkpoint = checkpoint_to_resume(cfg.resume, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    pretrained = _pretrained(cfg)
    if pretrained is None:
        datamodule = instantiate(cfg.data)
    else:  # the encoder was trained on inputs normalized its way
        datamodule = instantiate(cfg.data, mean=pretrained.mean, std=pretrained.std)
        check_encoder_fits_data(pretrained.encoder, datamodule, cfg.encoder)
    datamodule.setup("fit")
    info = datamodule.info
    if pretrained is None:
        encoder = build_encoder(input_shape=info.input_shape, **OmegaConf.to_container(cfg.backbone, resolve=True))
    else:
        encoder = pretrained.encoder.train()
    reuse = check_reuse(cfg, encoder)
    encoder = encoder.truncated(reuse)
    schedule = cfg.schedule
    model = Classifier(
        encoder,
        instantiate(cfg.optimizer),
        info,
        encoder_lr_factor=schedule.encoder_lr_factor if pretrained else 1.0,
        dropout=cfg.head.dropout,
        pool=cfg.head.pool,
        lr_schedule=instantiate(cfg.lr_schedule),
    )
    if checkpoint is not None:
        check_resumable(checkpoint, model)
    callbacks = [FreezeSchedule(schedule.unfreeze_epoch, schedule.unfreeze_top)] if pretrained else []
    trainer = build_trainer(cfg.trainer, run_dir, callbacks, faults=instantiate(cfg.faults))
    trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint)
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    results = {
        "kind": "finetune",
        "seed": cfg.seed,
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
        "label_budget": info.num_train,
        "num_test": len(datamodule.test_set.labels),
        "data": {"name": info.name, "classes": list(info.classes)},
        "encoder_file": None if pretrained is None else str(Path(cfg.encoder).resolve()),
        # The report tells encoders apart by content, and matches a transfer run to the
        # from-scratch runs of the same architecture.
        "encoder_sha256": None if pretrained is None else sha256(cfg.encoder),
        "pretext_task": None if pretrained is None else pretrained.pretext_task,
        "reused_blocks": reuse,
        "architecture": encoder.spec(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        source = (
            "from scratch" if pretrained is None else f"from {printable(pretrained.pretext_task)} encoder {cfg.encoder}"
        )
        print(
            f"test accuracy {results['test_acc']:.4f} on {results['num_test']} test images ({source}, "
            f"{info.num_train} labeled images); "
            f"results in {run_dir / 'results.json'}"
        )
    return results


main = command("finetune", run)

if __name__ == "__main__":
    main()
