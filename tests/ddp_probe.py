"""``python tests/ddp_probe.py ARGS`` runs ``python -m finetune ARGS`` with one more callback:
on every rank it records a fingerprint (SHA-256 of the bytes) of every encoder block's
parameters and buffers, and of the head, at the start of training and at the end of every
epoch, into ``RUN/probe-rank<R>.json``. Lightning's DDP launcher re-runs this same script
for the other ranks, so they are probed too."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch

import finetune.__main__ as finetune_main


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, value in tensors.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parts(module: torch.nn.Module) -> dict[str, str]:
    """Parameters, and buffers (batch-norm statistics: each rank updates its own while training)."""
    return {
        "params": fingerprint(dict(module.named_parameters())),
        "buffers": fingerprint(dict(module.named_buffers())),
    }


class Probe(L.Callback):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.record = {"start": None, "epochs": []}

    def state(self, module: L.LightningModule) -> dict:
        blocks = {name: parts(block) for name, block in module.encoder.blocks.named_children()}
        return {"blocks": blocks, "head": parts(module.head)["params"], "frozen": module.num_frozen}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.record.update(start=self.state(module), rank=trainer.global_rank, world_size=trainer.world_size)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.record["epochs"].append(self.state(module))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        (self.run_dir / f"probe-rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


build_trainer = finetune_main.build_trainer


def probed_trainer(cfg, run_dir: Path, callbacks=(), **kwargs) -> L.Trainer:
    return build_trainer(cfg, run_dir, [*callbacks, Probe(run_dir)], **kwargs)


finetune_main.build_trainer = probed_trainer

if __name__ == "__main__":
    os.environ["HYDRA_MAIN_MODULE"] = "__main__"  # find conf/ beside finetune/__main__.py, as `python -m finetune` does
    finetune_main.main()
