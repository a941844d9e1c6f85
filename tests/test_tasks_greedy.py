"""Greedy layer-wise autoencoder: one block trains per stage, the blocks below stay bit-identical."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from synthetic import ADAM, encoder, images, info, loader, snapshot, trainer

from pretrain.tasks.autoencoder import Autoencoder


class BlocksPerEpoch(L.Callback):
    """Every encoder block's parameters and buffers at the start and end of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, list, list]] = []

        self.modes: list[tuple[int, list[bool]]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = [snapshot(b) for b in pl_module.encoder.blocks]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.modes.append((pl_module.stage, [b.training for b in pl_module.encoder.blocks]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append((pl_module.stage, self._start, [snapshot(b) for b in pl_module.encoder.blocks]))


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_while_stage_k_trains_the_blocks_below_are_bit_identical(arch, tmp_path):
    torch.manual_seed(0)
    enc = encoder(arch)  # cnn: batch norm, whose running statistics must not move either
    task = Autoencoder(enc, ADAM, info(), greedy=True, stage_epochs=2)
    watch = BlocksPerEpoch()
    x, y = images()
    t = trainer(tmp_path, callbacks=[watch], max_epochs=10)
    t.fit(task, train_dataloaders=loader(x, y))
    assert [stage for stage, _, _ in watch.epochs] == [0, 0, 1, 1]
    assert t.current_epoch == 4  # stopped after its stages, not at max_epochs
    for stage, start, end in watch.epochs:
        for k in range(len(enc)):
            if k == stage:
                assert not same(start[k], end[k]), f"block {k} should train in stage {stage}"
            else:
                assert same(start[k], end[k]), f"block {k} moved in stage {stage}"
    assert all(modes == [k >= stage for k in range(len(enc))] for stage, modes in watch.modes)


def test_stages_split_max_epochs_when_not_given(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    task = Autoencoder(encoder("mlp"), ADAM, info(), greedy=True)
    watch = BlocksPerEpoch()
    x, y = images()
    trainer(tmp_path, callbacks=[watch], max_epochs=5).fit(task, train_dataloaders=loader(x, y))
    assert [stage for stage, _, _ in watch.epochs] == [0, 0, 1, 1, 1]  # the last stage takes the rest
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("greedy stage")]
    assert said == [
        "greedy stage 1 of 2: training block 0 (dense1)",
        "greedy stage 2 of 2: training block 1 (dense2), the blocks below frozen",
    ]


def test_too_few_epochs_for_the_stages_is_a_clear_error(tmp_path):
    task = Autoencoder(encoder("cnn"), ADAM, info(), greedy=True, stage_epochs=3)
    x, y = images()
    with pytest.raises(ValueError, match="needs 2 stages x 3 epoch"):
        trainer(tmp_path, max_epochs=5).fit(task, train_dataloaders=loader(x, y))
    with pytest.raises(ValueError, match="needs task.greedy=true"):
        Autoencoder(encoder("cnn"), ADAM, info(), stage_epochs=3)


def test_later_stages_reconstruct_the_features_of_the_block_below():
    torch.manual_seed(0)
    task = Autoencoder(encoder("cnn"), ADAM, info(), greedy=True)
    shapes = task.encoder.block_shapes()
    x, _ = images()
    for k, decoder in enumerate(task.stage_decoders):
        features = task.encoder.blocks[:k](x) if k else x
        out = decoder(task.encoder.blocks[k](features))
        assert tuple(out.shape[1:]) == shapes[k]


@pytest.mark.parametrize("greedy", [False, True])
def test_a_denoising_autoencoder_sees_noisy_input_and_reconstructs_the_clean_one(greedy, tmp_path):
    torch.manual_seed(0)
    x, y = images()
    task = Autoencoder(encoder("cnn"), ADAM, info(), greedy=greedy, noise=0.5)
    seen = []
    task.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    task.train()
    task.task_loss(x[:8].float())
    assert not torch.allclose(seen[-1], x[:8].float())  # the input is corrupted in training ...
    assert 0.4 < (seen[-1] - x[:8].float()).std() < 0.6  # ... by noise of the configured std
    task.eval()
    clean = Autoencoder(encoder("cnn"), ADAM, info(), greedy=greedy)
    clean.load_state_dict(task.state_dict())
    clean.eval()
    with torch.no_grad():  # evaluation: no noise, so the same loss as without the option
        assert torch.equal(task.task_loss(x[:8].float()), clean.task_loss(x[:8].float()))
    with pytest.raises(ValueError, match="task.noise=-1 must be a standard deviation >= 0"):
        Autoencoder(encoder("cnn"), ADAM, info(), noise=-1)


def test_a_denoising_autoencoders_loss_falls(tmp_path):
    torch.manual_seed(0)
    task = Autoencoder(encoder("mlp"), ADAM, info(), noise=0.3)
    losses = []

    class Losses(L.Callback):  # the task's epoch means are set after the callbacks' epoch ends
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.on_train_end(trainer, pl_module)

        def on_train_end(self, trainer, pl_module) -> None:
            if "train/loss_epoch" in pl_module.epoch_means:
                losses.append(pl_module.epoch_means["train/loss_epoch"])

    trainer(tmp_path, [Losses()], max_epochs=6).fit(task, loader(*images()))
    assert len(losses) == 6 and losses[-1] < losses[0]
