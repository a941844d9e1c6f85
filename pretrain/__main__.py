"""``python -m pretrain``: compose the config, train the pretext task, export its encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pretrain.assemble import assemble
from pretrain.config.validate import validate_config
from pretrain.encoder_file.format import save_encoder
from pretrain.run.cli import command
from pretrain.run.files import write_json
from pretrain.run.resume import check_resumable, checkpoint_to_resume
from pretrain.run.trainer import build_trainer


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Pretrain as ``cfg`` says, write ``encoder.safetensors`` and ``results.json`` to ``run_dir``."""
    validate_config(cfg, "pretrain")
    checkpoint = checkpoint_to_resume(cfg.resume, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = assemble(cfg)
    info = datamodule.info
    if checkpoint is not None:
        check_resumable(checkpoint, task)
    trainer = build_trainer(cfg.trainer, run_dir, [instantiate(cfg.online_eval)], faults=instantiate(cfg.faults))
    trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint)
    metrics = {**{k: float(v) for k, v in trainer.callback_metrics.items()}, **task.epoch_means}
    results = {
        "kind": "pretrain",
        "task": task.name,
        "seed": cfg.seed,
        "metrics": metrics,
        "encoder_file": str(run_dir / "encoder.safetensors"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        save_encoder(
            run_dir / "encoder.safetensors",
            task.exported_encoder(),
            mean=list(info.mean),
            std=list(info.std),
            pretext={"task": task.name, "config": OmegaConf.to_container(cfg.task, resolve=True)},
            data={"name": info.name, "classes": list(info.classes), "num_train": info.num_train},
            metrics=metrics,
        )
        write_json(run_dir / "results.json", results)
        final = {k: v for k, v in sorted(metrics.items()) if k.startswith("val/") or k.endswith("loss_epoch")}
        print(f"after {trainer.current_epoch} epochs: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
        print(f"encoder written to {run_dir / 'encoder.safetensors'}")
    return results


main = command("pretrain", run)

if __name__ == "__main__":
    main()
