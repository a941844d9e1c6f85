"""The gradient-norm curve: the norm clipping acts on, on the steps the loggers write."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pretrain.grad_norm import GradNormMonitor


class TwoOptimizers(L.LightningModule):
    """A GAN-shaped module: manual optimization, one optimizer per part."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.parts = nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 2)])
        self.expected: list[list[float]] = [[], []]

    def training_step(self, batch, batch_idx):
        for i, (optimizer, part) in enumerate(zip(self.optimizers(), self.parts, strict=True)):
            self.manual_backward(part(batch[0]).pow(2).mean() * (i + 1))
            self.expected[i].append(torch.cat([p.grad.flatten() for p in part.parameters()]).norm().item())
            optimizer.step()
            optimizer.zero_grad()

    def configure_optimizers(self):
        return [torch.optim.SGD(part.parameters(), lr=0.1) for part in self.parts]


def test_grad_norm_per_optimizer_on_logged_steps(tmp_path):
    torch.manual_seed(0)
    model = TwoOptimizers()
    data = DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=2)  # 6 steps
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="", version="csv"),
        callbacks=[GradNormMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    for i in (0, 1):
        logged = [
            (int(r["step"]), float(r[f"train/grad_norm/optimizer_{i}"]))
            for r in rows
            if r.get(f"train/grad_norm/optimizer_{i}")
        ]
        # Lightning writes step metrics on batches 2, 4, 6 (steps 1, 3, 5): those norms, no others.
        assert [step for step, _ in logged] == [1, 3, 5]
        assert [value for _, value in logged] == [pytest.approx(model.expected[i][b]) for b in (1, 3, 5)]
