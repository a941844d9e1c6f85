"""Freezing schedule, learning rates and gradient clipping of the fine-tuned classifier."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
from helpers import REPO
from hydra.utils import instantiate
from omegaconf import OmegaConf
from synthetic import trainer

from finetune.classifier import Classifier
from finetune.lr_schedule import cosine
from finetune.schedule import FreezeSchedule
from pretrain.data.module import ImageDataModule
from pretrain.encoders import build_encoder


def digits(**kw) -> ImageDataModule:
    dm = ImageDataModule("digits", label_budget=200, val_size=0, batch_size=32, seed=0, **kw)
    dm.setup("fit")
    return dm


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Watch(L.Callback):
    """Records encoder/head state and the encoder group's lr at the end of every epoch."""

    def __init__(self) -> None:
        self.start = {}
        self.ends = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {"encoder": snapshot(pl_module.encoder), "head": snapshot(pl_module.head)}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        self.ends.append(
            {
                "encoder": snapshot(pl_module.encoder),
                "head": snapshot(pl_module.head),
                "lr": groups,
                "frozen_training": [b.training for b in pl_module.encoder.blocks],
            }
        )


@pytest.mark.parametrize("optimizer", sorted(p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml")))
def test_frozen_blocks_are_bit_identical_then_train_at_lower_rate(optimizer, tmp_path):
    """With every optimizer of conf/optimizer as configured there (fused kernels included), and
    weight decay, which would move a frozen weight that an optimizer stepped without a gradient."""
    dm = digits()
    encoder = build_encoder("cnn", dm.info.input_shape, channels=[8, 16])  # batch norm: running stats too
    base_lr, factor = 0.01, 0.1
    opt = instantiate(OmegaConf.load(REPO / "conf" / "optimizer" / f"{optimizer}.yaml"), lr=base_lr, weight_decay=0.1)
    model = Classifier(encoder, opt, dm.info, encoder_lr_factor=factor)
    watch = Watch()
    trainer(tmp_path, [FreezeSchedule(unfreeze_epoch=2), watch], max_epochs=3).fit(model, datamodule=dm)

    for epoch in (0, 1):  # frozen: every parameter and buffer bit-identical, the head moves
        end = watch.ends[epoch]
        for name, value in watch.start["encoder"].items():
            assert torch.equal(value, end["encoder"][name]), f"{name} moved in frozen epoch {epoch}"
        assert not any(end["frozen_training"]), "frozen blocks must be in inference mode"
        assert any(not torch.equal(v, end["head"][k]) for k, v in watch.start["head"].items())
    unfrozen = watch.ends[2]
    moved = [k for k, v in watch.ends[1]["encoder"].items() if not torch.equal(v, unfrozen["encoder"][k])]
    assert any("running_mean" in k for k in moved) and any("weight" in k for k in moved)
    assert unfrozen["lr"] == {"head": base_lr, "encoder": pytest.approx(base_lr * factor)}
    assert all(unfrozen["frozen_training"])


def test_unfreeze_top_blocks_only(tmp_path):
    dm = digits()
    encoder = build_encoder("mlp", dm.info.input_shape, widths=[32, 32, 16])
    model = Classifier(encoder, functools.partial(torch.optim.Adam, lr=1e-2), dm.info, encoder_lr_factor=0.5)
    watch = Watch()
    trainer(tmp_path, [FreezeSchedule(unfreeze_epoch=1, unfreeze_top=1), watch], max_epochs=2).fit(model, datamodule=dm)
    before, after = watch.ends[0]["encoder"], watch.ends[1]["encoder"]
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith("blocks.dense3"), name


def test_schedule_state_is_a_function_of_the_epoch():
    schedule = FreezeSchedule(unfreeze_epoch=3, unfreeze_top=2)
    assert [schedule.frozen_blocks(e, 5) for e in range(5)] == [5, 5, 5, 3, 3]
    assert FreezeSchedule(None).frozen_blocks(100, 4) == 4
    assert FreezeSchedule(0).frozen_blocks(0, 4) == 0


def test_cosine_schedule_scales_every_group_down_to_zero_at_the_last_step(tmp_path):
    dm = digits()
    encoder = build_encoder("mlp", dm.info.input_shape, widths=[16])
    rates = []

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    model = Classifier(encoder, functools.partial(torch.optim.Adam, lr=0.01), dm.info, 0.1, lr_schedule=cosine)
    trainer(tmp_path, [Rates()], max_epochs=2).fit(model, datamodule=dm)
    steps = 2 * len(dm.train_dataloader())
    assert len(rates) == steps and rates[0] == {"head": 0.01, "encoder": pytest.approx(0.001)}
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]
    assert [r["head"] for r in rates] == pytest.approx(expected)
    assert all(r["encoder"] == pytest.approx(0.1 * r["head"]) for r in rates)


def test_warm_up_then_cosine():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = cosine(optimizer, total_steps=10, warmup_steps=4)
    factors = [schedule.lr_lambdas[0](s) for s in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0 and factors[10] == 0.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


class RecordingSGD(torch.optim.SGD):
    """Records the gradients it is about to apply (after Lightning's clipping)."""

    seen: list[torch.Tensor] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad.detach().flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
        RecordingSGD.seen.append(torch.cat(grads))
        super().step()
        return loss


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_what_the_optimizer_applies(algorithm, tmp_path):
    dm = digits()
    encoder = build_encoder("mlp", dm.info.input_shape, widths=[64, 32])
    # A large learning rate on unnormalized-scale logits makes raw gradients far above the threshold.
    model = Classifier(encoder, functools.partial(RecordingSGD, lr=0.5), dm.info)
    RecordingSGD.seen = []
    threshold = 0.05
    clipping = {"gradient_clip_val": threshold, "gradient_clip_algorithm": algorithm}
    trainer(tmp_path, max_epochs=1, **clipping).fit(model, datamodule=dm)
    assert len(RecordingSGD.seen) == len(dm.train_dataloader())
    for grad in RecordingSGD.seen:
        if algorithm == "norm":
            assert grad.norm() <= threshold * (1 + 1e-5)
        else:
            assert grad.abs().max() <= threshold
    if algorithm == "norm":  # clipping was active, not vacuous
        assert max(g.norm() for g in RecordingSGD.seen) >= threshold * 0.99
