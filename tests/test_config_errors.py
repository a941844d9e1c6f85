"""Bad input gets one clear error before any work is spent, and leaves no output behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
from helpers import CONF, QUIET, REPO, hydra_command, make_config
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from finetune.checks import CHECKS
from pretrain.config.typecheck import fits
from pretrain.config.validate import NO_CHECKS, ConfigError, validate_config
from pretrain.data.images import DataError
from pretrain.encoder_file.format import EncoderFileError, save_encoder
from pretrain.encoders import EncoderError, build_encoder
from pretrain.run.cli import run_command

BAD_CONFIGS = [
    ("pretrain", ["+sede=3"], r"unknown key 'sede' \(did you mean 'seed'\?\)"),
    (
        "pretrain",
        ["+data.batchsize=3"],
        r"data.batchsize is not an option of .*ImageDataModule \(did you mean 'batch_size'",
    ),
    (
        "pretrain",
        ["+trainer.max_epoch=3"],
        r"trainer.max_epoch is not an option of .*Trainer \(did you mean 'max_epochs'",
    ),
    ("pretrain", ["+task.los=bce"], r"task.los is not an option of .*Autoencoder \(did you mean 'loss'"),
    ("pretrain", ["+backbone.widthz=[3]"], r"backbone.widthz is not an option of mlp \(did you mean 'widths'"),
    ("pretrain", ["+faults.every=1"], r"faults.every is not an option of .*FaultTolerance"),
    ("finetune", ["+schedule.unfreez_epoch=1"], r"schedule.unfreez_epoch is not a key of schedule \(did you mean"),
    ("pretrain", ["data.batch_size=abc"], r"data.batch_size='abc' must be int"),
    ("pretrain", ["data.hflip=maybe"], r"data.hflip='maybe' must be bool"),
    ("pretrain", ["backbone.widths=[a,b]"], r"backbone.widths=\['a', 'b'\] must be list of int"),
    ("pretrain", ["seed=abc"], r"seed='abc' must be int"),
    ("pretrain", ["trainer.precision=fp16"], r"trainer.precision='fp16' must be one of"),
    ("finetune", ["schedule.unfreeze_epoch=abc"], r"schedule.unfreeze_epoch='abc' must be int"),
    ("pretrain", ["optimizer.lr=0"], r"optimizer.lr=0 must be positive"),
    ("pretrain", ["optimizer.lr=-0.1"], r"optimizer.lr=-0.1 must be positive"),
    ("pretrain", ["optimizer.lr=inf"], r"optimizer.lr=inf must be positive and finite"),
    ("finetune", ["optimizer.lr=nan"], r"optimizer.lr=nan must be positive and finite"),
    ("pretrain", ["trainer.gradient_clip_val=-1"], r"trainer.gradient_clip_val=-1 must be >= 0 and finite, or null"),
    ("finetune", ["trainer.gradient_clip_val=inf"], r"trainer.gradient_clip_val=inf must be >= 0 and finite"),
    ("pretrain", ["data.val_size=1.5"], r"data.val_size=1.5 must be a whole count >= 0 or a fraction in \[0, 1\)"),
    ("pretrain", ["task=siamese", "data.pairs_per_image=0"], r"data.pairs_per_image=0 must be at least 1"),
    ("pretrain", ["task=contrastive", "task.temperature=0"], r"task.temperature=0 must be positive"),
    ("pretrain", ["task=contrastive", "task.crop_scale=[0.5,0.2]"], r"task.crop_scale=\[0.5, 0.2\] must be \[low, "),
    ("pretrain", ["task=contrastive", "task.crop_ratio=[1]"], r"task.crop_ratio=\[1\] must be \[low, high\] aspect"),
    ("pretrain", ["task=contrastive", "task.jitter_p=1.5"], r"task.jitter_p=1.5 must be a probability"),
    ("pretrain", ["data=folder", "data.root=/x", "data.image_size=[0,0]"], r"data.image_size=\[0, 0\] must be \["),
    ("pretrain", ["data=faces", "data.image_size=[-4,40]"], r"data.image_size=\[-4, 40\] must be"),
    ("pretrain", ["data.std=[0]"], r"data.std=\[0\] must be positive"),
    ("pretrain", ["data.std=[-1]"], r"data.std=\[-1\] must be positive"),
    ("pretrain", ["data.mean=[nan]"], r"data.mean=\[nan\] must be finite numbers"),
    ("pretrain", ["data.batch_size=0"], r"data.batch_size=0 must be at least 1"),
    ("pretrain", ["data.batch_size=-5"], r"data.batch_size=-5 must be at least 1"),
    ("pretrain", ["trainer.max_epochs=0"], r"trainer.max_epochs=0 must be at least 1"),
    ("pretrain", ["trainer.max_epochs=-1"], r"trainer.max_epochs=-1 must be at least 1"),
    ("pretrain", ["data.label_budget=0"], r"data.label_budget=0 must be at least 1"),
    ("pretrain", ["seed=-1"], r"seed=-1 must be in 0..2\*\*32-1"),
    ("pretrain", ["optimizer.betas=[2,0.9]"], r"optimizer: ValueError: Invalid beta parameter at index 0: 2"),
    ("pretrain", ["~optimizer._partial_"], r"optimizer needs _partial_: true"),
    (
        "pretrain",
        ["optimizer._target_=torch.optim.Adamm"],
        r"optimizer._target_='torch.optim.Adamm' is not one of \['torch.optim.Adagrad', 'torch.optim.Adam', ",
    ),
    ("pretrain", ["optimizer._target_=torch.nn.Linear"], r"optimizer._target_='torch.nn.Linear' is not one of"),
    ("pretrain", ["task._target_=pretrain.tasks.jigsaw.Jigsaw"], r"task._target_='pretrain.tasks.jigsaw.Jigsaw' is"),
    ("pretrain", ["backbone.arch=transformer"], r"backbone.arch='transformer' is not an architecture"),
    ("pretrain", ["backbone=resnet50", "backbone.stem=huge"], r"backbone.stem='huge' must be one of \['auto', "),
    (
        "pretrain",
        ["augment=strong", "data.augment.crop.scale=[0.5,1.5]"],
        r"data.augment.crop.scale=\[0.5, 1.5\] must be \[low, high\] fractions of the image area",
    ),
    ("finetune", ["+data.augment.blurr={}"], r"data.augment.blurr is not a transform: did you mean 'blur'\?"),
    (
        "pretrain",
        ["augment=light", "data.augment.crop=0.5"],
        r"data.augment=\{'crop': 0.5\} must be dict\[str, dict\[str, Any\]\] or None",
    ),
    (
        "pretrain",
        ["data.mean={_target_:os.system,command:ls}"],
        r"data.mean._target_='os.system': a config may build only what conf/ declares, .* no _target_ at data.mean$",
    ),
    (
        "pretrain",
        ["data.name=fashion-mnist"],
        r"data.name='fashion-mnist' is not a data set \(did you mean 'fashion_mnist'",
    ),
    ("pretrain", ["data=base"], r"data.name has no value"),
    (
        "finetune",
        ["encoder=e.safetensors", "schedule.unfreeze_epoch=30"],
        r"schedule.unfreeze_epoch=30 is not before the last epoch.*0..29",
    ),
    ("pretrain", ["trainer.channels_last=maybe"], r"trainer.channels_last='maybe' must be true or false"),
    ("finetune", ["reuse_blocks=0"], r"reuse_blocks=0 must be at least 1"),
    ("finetune", ["schedule.unfreeze_top=0"], r"schedule.unfreeze_top=0 must be at least 1"),
    ("finetune", ["schedule.encoder_lr_factor=0"], r"schedule.encoder_lr_factor=0 must be positive"),
    ("finetune", ["head.dropout=1"], r"head.dropout=1 must be in \[0, 1\)"),
    ("finetune", ["encoder=3"], r"encoder=3 must be str or None"),
]


OWN = {"pretrain": NO_CHECKS, "finetune": CHECKS}  # each command's own checks


@pytest.mark.parametrize("name,overrides,message", BAD_CONFIGS)
def test_bad_config_values_are_named_with_the_fix(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(make_config(name, overrides), name, OWN[name])


def test_every_problem_is_in_the_one_message():
    with pytest.raises(ConfigError) as err:
        validate_config(make_config("pretrain", ["optimizer.lr=0", "data.batch_size=0", "+sede=1"]), "pretrain")
    assert str(err.value).count("\n  ") == 3


def test_the_shipped_configs_are_valid():
    for overrides in (
        ["task=supervised", "backbone=cnn", "optimizer=nesterov"],
        ["data=folder", "data.root=/x"],
        ["task=contrastive", "backbone=vit"],
        ["augment=strong", "backbone=resnet50"],
        ["augment=light", "backbone=vit_small"],
    ):
        validate_config(make_config("pretrain", overrides), "pretrain")
    validate_config(
        make_config("finetune", ["encoder=e.safetensors", "backbone=resnet18", "augment=strong"]), "finetune", CHECKS
    )
    validate_config(make_config("finetune", ["trainer=ddp", "experiment=fashion_transfer"]), "finetune", CHECKS)
    # A from-scratch run reuses nothing, so a schedule past its last epoch does not concern it.
    validate_config(make_config("finetune", ["trainer.max_epochs=2"]), "finetune", CHECKS)


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_the_quick_preset_shortens_any_run(name):
    cfg = make_config(name, ["debug=quick", "trainer.max_epochs=3"])  # the command line still has the last word
    validate_config(cfg, name, OWN[name])
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (3, 10, 2)


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["data.label_budget=5"], DataError, r"data.label_budget=5: a budget of 5 images cannot cover the 10 classes"),
        (["data.label_budget=5000"], DataError, r"data.label_budget=5000: asked for 5000 images but .* only 1212"),
        (["data.classes=[1,2]", "data.label_budget=1"], DataError, r"cannot cover the 2 classes: use at least 2"),
        (["data.classes=[cat,'3']"], DataError, r"data.classes=\['cat', '3'\]: unknown class 'cat': .*'0', '1'"),
        (["data.classes=[12]"], DataError, r"class index 12 is out of range"),
        (["data.classes=[1]", "data.exclude_classes=[1]"], DataError, r"class selection .* is empty"),
        (
            ["data=fashion_mnist", "data.root=ROOT"],
            DataError,
            r"FashionMNIST was not found under ROOT/FashionMNIST/raw",
        ),
        (["backbone.widths=[-4]"], EncoderError, r"backbone 'mlp' .*negative dimension"),
        (["backbone.dropout=1.5"], EncoderError, r"backbone 'mlp' .*dropout probability has to be between 0 and 1"),
        (["trainer.gradient_clip_algorithm=sideways"], ConfigError, r"trainer: .*gradient_clip_algorithm"),
        (["trainer.devices=0"], ConfigError, r"trainer: .*devices"),
        (["resume=ROOT"], ConfigError, r"resume=ROOT: ROOT/checkpoints/last.ckpt does not exist"),
        (["data.max_shift=1000"], DataError, r"data.max_shift=1000 would shift images of 8x8 pixels out of view"),
        (["task=siamese", "data.classes=[3]"], DataError, r"pairs need .* the training split has 1 class"),
    ],
)
def test_pretraining_refuses_bad_data_and_setup_before_training(tmp_path, overrides, error, message):
    overrides = [o.replace("ROOT", str(tmp_path)) for o in overrides]
    with pytest.raises(error, match=message.replace("ROOT", str(tmp_path))):
        pretrain_main.run(make_config("pretrain", [*overrides, *QUIET]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("encoders")
    for name, shape in (("digits", (1, 8, 8)), ("big", (1, 10, 10)), ("rgb", (3, 8, 8))):
        encoder = build_encoder("mlp", shape, widths=[16, 8, 8])
        mean, std = [0.5] * shape[0], [0.25] * shape[0]
        save_encoder(
            folder / f"{name}.safetensors", encoder, mean=mean, std=std, pretext={"task": "t"}, data={"name": "d"}
        )
    return folder


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["encoder=E/nope.safetensors"], EncoderFileError, r"E/nope.safetensors does not exist: .*encoder=none"),
        (["encoder=E/last.ckpt"], EncoderFileError, r"pickled checkpoint.*python -m pretrain.export"),
        (["encoder=E/digits.safetensors", "reuse_blocks=4"], ConfigError, r"reuse_blocks=4, but the mlp encoder has 3"),
        (["encoder=none", "reuse_blocks=6"], ConfigError, r"reuse_blocks=6, but the mlp encoder has 5 block\(s\)"),
        (
            ["encoder=E/digits.safetensors", "reuse_blocks=2", "schedule.unfreeze_top=3"],
            ConfigError,
            r"schedule.unfreeze_top=3, but only 2 block\(s\) are reused",
        ),
        (
            ["encoder=E/big.safetensors"],
            ConfigError,
            r"takes 10x10 images, but data=digits has 8x8 .*data.image_size=\[10,10\]",
        ),
        (
            ["encoder=E/rgb.safetensors"],
            ConfigError,
            r"takes 3 channel\(s\), but data=digits has 1 .*data.grayscale=false",
        ),
        (["encoder=E/digits.safetensors", "data.label_budget=1000000"], DataError, r"data.label_budget=1000000: asked"),
    ],
)
def test_finetuning_refuses_a_mismatched_encoder_before_training(tmp_path, encoder_files, overrides, error, message):
    overrides = [o.replace("E/", f"{encoder_files}/") for o in overrides]
    (encoder_files / "last.ckpt").touch()
    with pytest.raises(error, match=message.replace("E/", f"{encoder_files}/")):
        finetune_main.run(make_config("finetune", [*overrides, *QUIET]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def hydra_run(tmp_path: Path, name: str, overrides: list[str]):
    """Set up what @hydra.main would before calling the task function: the config, HydraConfig,
    and Hydra's own files in a fresh run folder."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    run_dir = tmp_path / "outputs" / "day" / "time"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    (run_dir / ".hydra").mkdir(parents=True)
    for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / f).write_text("x: 1\n")
    (run_dir / f"{name}.log").touch()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir


def test_the_command_prints_one_line_exits_2_and_removes_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, run_dir = hydra_run(tmp_path, "pretrain", ["optimizer.lr=-1"])
    with pytest.raises(SystemExit) as exit_:
        run_command(cfg, pretrain_main.run)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: invalid configuration:\n  optimizer.lr=-1 must be positive") and "Traceback" not in err
    )
    assert not (tmp_path / "outputs").exists()  # the run folder and its empty parents are gone

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    cfg, run_dir = hydra_run(tmp_path, "pretrain", ["optimizer.lr=-1"])
    with pytest.raises(ConfigError):  # the whole traceback, for debugging
        run_command(cfg, pretrain_main.run)


def test_a_nan_run_exits_1_and_keeps_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, run_dir = hydra_run(tmp_path, "pretrain", ["optimizer=sgd", "optimizer.lr=1e6", *QUIET])
    with pytest.raises(SystemExit) as exit_:
        run_command(cfg, pretrain_main.run)
    assert exit_.value.code == 1
    assert "\nerror: the training loss became" in "\n" + capsys.readouterr().err
    assert (run_dir / "csv").is_dir() and not (run_dir / "encoder.safetensors").exists()


def test_a_value_error_raised_by_our_code_is_one_line_too(tmp_path, monkeypatch, capsys):
    """What a task raises for a config it cannot work with (here the autoencoder's loss)."""
    monkeypatch.chdir(tmp_path)
    cfg, _ = hydra_run(tmp_path, "pretrain", ["task.loss=hinge", *QUIET])
    with pytest.raises(SystemExit) as exit_:
        run_command(cfg, pretrain_main.run)
    assert (
        exit_.value.code == 2
        and capsys.readouterr().err == "error: task.loss must be one of ('mse', 'bce'), not 'hinge'\n"
    )


@pytest.mark.slow
def test_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "finetune", "encoder=missing.safetensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        "error: encoder file missing.safetensors does not exist: pass the encoder.safetensors that "
        "`python -m pretrain` wrote, or encoder=none to train from scratch"
    )
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value,annotation,ok",
    [
        (3, int, True),
        (True, int, False),
        (3, float, True),
        ("3", float, False),
        (None, int | None, True),
        ([1, "a"], list[int | str], True),
        ([1, 2.5], list[int], False),
        ([0.9, 0.99], tuple[float, float], True),
        ([0.9], tuple[float, float], False),
        ("16-mixed", Literal["16-mixed", 32], True),
        ("32", Literal["16-mixed", 32], False),
        ({"a": 1}, dict[str, int], True),
        ("x", torch.Tensor, False),
    ],
)
def test_values_are_judged_by_the_annotation(value, annotation, ok):
    assert fits(value, annotation) is ok


def test_omegaconf_round_trip_of_the_saved_config_is_valid(tmp_path):
    """resume=RUN validates the config saved in RUN/.hydra/config.yaml, interpolations and all."""
    saved = tmp_path / "config.yaml"
    OmegaConf.save(make_config("pretrain", ["optimizer=sgd"]), saved)
    validate_config(OmegaConf.load(saved), "pretrain")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.std=[-1]"], "error: invalid configuration:\n  data.std=[-1] must be positive"),
        # The loaders would find it, after Lightning's loggers wrote their files: the data module's setup does.
        (["task=siamese", "data.classes=[3]"], "error: pairs need at least 2 classes (identities)"),
    ],
)
def test_an_input_error_before_training_leaves_no_folder(tmp_path, monkeypatch, capsys, overrides, message):
    monkeypatch.chdir(tmp_path)
    cfg, _ = hydra_run(tmp_path, "pretrain", [*overrides, "trainer.max_epochs=1", *QUIET])
    with pytest.raises(SystemExit) as exit_:
        run_command(cfg, pretrain_main.run)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(message) and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_an_error_quoting_a_file_prints_its_control_characters_escaped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, _ = hydra_run(tmp_path, "pretrain", [])

    def run(cfg, run_dir):
        raise DataError("class '\x1b[2J\x1b[31mred' in:\n  file.json")

    with pytest.raises(SystemExit):
        run_command(cfg, run)
    assert capsys.readouterr().err == "error: class '\\x1b[2J\\x1b[31mred' in:\n  file.json\n"


@pytest.mark.slow
def test_command_line_siamese_without_pairs_leaves_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pretrain", "task=siamese", "data.pairs_per_image=0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.endswith(
        "error: invalid configuration:\n  data.pairs_per_image=0 must be at least 1, e.g. data.pairs_per_image=1\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_finetuning_prints_the_encoders_task_name_escaped(tmp_path, capsys):
    encoder = build_encoder("mlp", (1, 8, 8), widths=[8])
    path = tmp_path / "e.safetensors"
    save_encoder(path, encoder, mean=[0.5], std=[0.25], pretext={"task": "\x1b[2Jauto\nencoder"}, data={"name": "d"})
    limits = ["+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    overrides = [f"encoder={path}", "trainer.max_epochs=1", "schedule.unfreeze_epoch=null", *limits, *QUIET]
    finetune_main.run(make_config("finetune", overrides), tmp_path / "run")
    assert f"(from \\x1b[2Jauto\\nencoder encoder {path}, " in capsys.readouterr().out


TYPOS = [
    (
        pretrain_main,
        ["data.batchsize=32"],
        "invalid configuration:\n  data.batchsize is not an option of pretrain.data.module.ImageDataModule "
        "(did you mean 'batch_size'?)",
    ),
    (pretrain_main, ["optimzer=sgd"], "invalid configuration:\n  unknown key 'optimzer' (did you mean 'optimizer'?)"),
    (
        pretrain_main,
        ["task=nosuch"],
        "task=nosuch is not an option of task; the options are ['autoencoder', 'contrastive', 'gan', 'masked', "
        "'siamese', 'supervised']",
    ),
    (pretrain_main, ["task=autoencodr"], "task=autoencodr is not an option of task (did you mean 'autoencoder'?)"),
    (finetune_main, ["augment=strnog"], "augment=strnog is not an option of augment (did you mean 'strong'?)"),
    (
        finetune_main,
        ["schedule.unfreez_epoch=1", "optimizer.lr=-1"],  # every mistake in the one message
        "invalid configuration:\n  schedule.unfreez_epoch is not a key of schedule (did you mean 'unfreeze_epoch'?)"
        "\n  optimizer.lr=-1 must be positive and finite, e.g. optimizer.lr=0.001",
    ),
    (finetune_main, ["-m", "data.batchsize=32,64"], "invalid configuration:\n  data.batchsize is not an option of"),
    # a group set to nothing (Hydra's bare ValueError) or removed
    (pretrain_main, ["online_eval=null"], "online_eval=null: online_eval is a config group and needs one of its"),
    (
        finetune_main,
        ["~data"],
        "invalid configuration:\n  data is missing: it is a config group, choose one of its options ['digits', "
        "'faces', 'fashion_mnist', 'folder', 'mnist', 'stream'], e.g. data=digits\n",
    ),
]


@pytest.mark.parametrize("main,argv,message", TYPOS)
def test_typos_that_hydra_refuses_get_our_message_and_exit_2(tmp_path, monkeypatch, capsys, main, argv, message):
    """Hydra refuses these before any of our code runs, with "use +data.batchsize=32" (the wrong
    fix) and exit 1; the command says what the key was meant to be."""
    monkeypatch.chdir(tmp_path)
    assert hydra_command(main.main, [*argv, "hydra.sweep.dir=sweep"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "+data" not in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == (["sweep"] if "-m" in argv else [])  # no run folder
    assert "HYDRA_FULL_ERROR" not in os.environ


@pytest.mark.slow
def test_a_typo_on_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "pretrain", "data.batchsize=32"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and list(tmp_path.iterdir()) == []
    assert out.stderr == (
        "error: invalid configuration:\n"
        "  data.batchsize is not an option of pretrain.data.module.ImageDataModule (did you mean 'batch_size'?)\n"
    )


def test_debug_quick_fine_tunes_a_reused_encoder_through_both_phases():
    """One epoch would end before the default unfreeze epoch (5), which the config check refuses."""
    cfg = make_config("finetune", ["debug=quick", "encoder=e.safetensors"])
    assert (cfg.trainer.max_epochs, cfg.schedule.unfreeze_epoch, cfg.trainer.limit_train_batches) == (2, 1, 10)
    assert make_config("finetune", []).schedule.unfreeze_epoch == 5  # without it, the recipe as it is
