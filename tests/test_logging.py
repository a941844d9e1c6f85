"""What the loggers receive: the gradient-norm curve, and training values through `log_train`."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pretrain.run.callbacks.grad_norm import GradNormMonitor
from pretrain.tasks.base import PretextTask


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


class Recorder(L.LightningModule):
    """Logs through ``PretextTask.log_train``: a known value per step, batches of unequal size."""

    log_train = PretextTask.log_train
    on_train_epoch_end = PretextTask.on_train_epoch_end

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self._epoch_sums = {}
        self.sent: list[tuple[float, int]] = []

    def training_step(self, batch, batch_idx):
        value = torch.tensor(float(batch_idx + 10 * self.current_epoch))
        self.sent.append((value.item(), len(batch[0])))
        self.log_train({"value": value}, len(batch[0]))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_log_train_writes_steps_on_log_steps_and_the_epochs_image_weighted_mean(tmp_path):
    model = Recorder()
    data = DataLoader(TensorDataset(torch.randn(11, 1)), batch_size=4)  # batches of 4, 4, 3
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="", version="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    steps = [(int(r["step"]), float(r["train/value_step"])) for r in rows if r.get("train/value_step")]
    assert steps == [(1, 1.0), (3, 10.0), (5, 12.0)]  # the values of batches 2, 4, 6 only
    epochs = [float(r["train/value_epoch"]) for r in rows if r.get("train/value_epoch")]
    for epoch, logged in enumerate(epochs):
        sent = model.sent[3 * epoch : 3 * epoch + 3]
        assert logged == pytest.approx(sum(v * n for v, n in sent) / sum(n for _, n in sent))
    assert len(epochs) == 2


def test_the_training_bar_redraws_at_most_once_per_mininterval_and_closes_on_its_last_state():
    import io

    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    from pretrain.run.trainer import throttled

    out = io.StringIO()
    bar = throttled(Tqdm(total=100, file=out, mininterval=3600, ascii=True))
    drawn = out.getvalue()
    for step in range(1, 101):  # as Lightning does at epoch starts and ends: set n, describe, refresh
        bar.n = step
        bar.set_description(f"Epoch {step}")
        bar.set_postfix(loss=1 / step)
    assert out.getvalue() == drawn  # within the hour-long interval nothing was redrawn
    bar.close()
    assert "Epoch 100" in out.getvalue() and "100/100" in out.getvalue() and "loss=0.01" in out.getvalue()
