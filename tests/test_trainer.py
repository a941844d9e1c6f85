"""What ``build_trainer`` adds to Lightning's Trainer that is not a logger or a fault guard: the profiler."""

from __future__ import annotations

import logging

from helpers import QUIET, make_config
from lightning.pytorch.profilers import SimpleProfiler

import pretrain.__main__ as pretrain_main
from pretrain.run.trainer import NoProfiler, build_trainer


def test_by_default_no_profiler_and_one_shared_no_op_context(tmp_path):
    trainer = build_trainer(make_config("pretrain", QUIET).trainer, tmp_path)
    assert isinstance(trainer.profiler, NoProfiler)
    with trainer.profiler.profile("[Callback]x.on_train_batch_end") as inside:
        assert inside is None
    assert trainer.profiler.profile("a") is trainer.profiler.profile("b")  # nothing made per hook


def test_a_profiler_from_the_config_times_every_hook(tmp_path, monkeypatch):
    trainers = []
    build = pretrain_main.build_trainer

    def keep(*args, **kwargs):
        trainers.append(build(*args, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(pretrain_main, "build_trainer", keep)
    cfg = make_config("pretrain", [*QUIET, "trainer.max_epochs=1", "trainer.profiler=simple"])
    pretrain_main.run(cfg, tmp_path)
    profiler = trainers[0].profiler
    assert isinstance(profiler, SimpleProfiler)
    hooks = profiler.recorded_durations
    steps = [name for name in hooks if name.endswith(".training_step")]
    assert steps and len(hooks[steps[0]]) > 1, sorted(hooks)
    assert any(name.startswith("[Callback]LastCheckpoint") for name in hooks)


def test_building_a_trainer_prints_no_advertisement(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        build_trainer(make_config("pretrain", QUIET).trainer, tmp_path)
    assert "GPU available" in caplog.text and "litlogger" not in caplog.text
