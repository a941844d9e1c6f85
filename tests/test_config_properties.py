"""Generated malformed configs: each one is refused with a clear error (Hydra's own, or one the
command prints in one line: ``pretrain.run.cli``), never a traceback from inside torch or Lightning.
A generated config that passes the checks must run (one batch, ``fast_dev_run``)."""

from __future__ import annotations

import itertools

import pytest
from helpers import QUIET, make_config
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

import finetune.__main__ as finetune_main
import pretrain.__main__ as pretrain_main
from pretrain.run.cli import _reported

LEAVES = {
    "pretrain": [
        "seed",
        "data.batch_size",
        "data.eval_batch_size",
        "data.label_budget",
        "data.val_size",
        "data.classes",
        "data.exclude_classes",
        "data.hflip",
        "data.max_shift",
        "optimizer.lr",
        "optimizer.weight_decay",
        "optimizer.betas",
        "backbone.widths",
        "backbone.activation",
        "backbone.dropout",
        "backbone.batch_norm",
        "task.loss",
        "trainer.max_epochs",
        "trainer.precision",
        "trainer.gradient_clip_val",
        "trainer.gradient_clip_algorithm",
        "faults.checkpoint_every_n_steps",
        "faults.check_finite_every_n_steps",
    ],
    "finetune": [
        "encoder",
        "reuse_blocks",
        "schedule.unfreeze_epoch",
        "schedule.unfreeze_top",
        "schedule.encoder_lr_factor",
        "head.dropout",
        "data.label_budget",
        "data.labels_per_class",
        "optimizer.lr",
        "backbone.widths",
        "trainer.max_epochs",
        "eval",
        "knn.k",
    ],
}

scalars = st.one_of(
    st.integers(-3, 40),
    st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 3)),
    st.sampled_from(["abc", "relu", "norm", "bce", "1", "none", "16-mixed"]),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def render(value) -> str:
    """A value in Hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return repr(value)


def typo(key: str, at: int, char: str) -> str:
    """A near miss of a real key: one character replaced, dropped or added."""
    *parent, leaf = key.split(".")
    at %= len(leaf) + 1
    leaf = leaf[:at] + char + leaf[at + 1 :] if char else leaf[:at] + leaf[at + 1 :]
    return ".".join([*parent, leaf])


def overrides_for(name: str):
    value_override = st.builds(lambda k, v: f"{k}={render(v)}", st.sampled_from(LEAVES[name]), values)
    typo_override = st.builds(
        lambda k, at, c: f"+{typo(k, at, c)}=1",
        st.sampled_from(LEAVES[name]),
        st.integers(0, 20),
        st.sampled_from("_sxe"),
    )
    # Mostly values (each may be fine, wrong or out of range), now and then a mistyped key.
    return st.lists(st.one_of(value_override, value_override, value_override, typo_override), min_size=1, max_size=2)


counter = itertools.count()


def refused_clearly_or_runs(name: str, overrides: list[str], tmp_path) -> None:
    try:
        cfg = make_config(name, [*overrides, *QUIET, "+trainer.fast_dev_run=1"])
    except (HydraException, OmegaConfBaseException):
        return  # Hydra's own message, e.g. "Could not append to config. An item is already at ..."
    run = pretrain_main.run if name == "pretrain" else finetune_main.run
    try:
        run(cfg, tmp_path / str(next(counter)))
    except Exception as err:  # noqa: BLE001 - the property is about which errors escape
        assert _reported(err) is not None, f"{overrides}: unclear {type(err).__name__}: {err}"


GENERATED = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@GENERATED
@given(overrides=overrides_for("pretrain"))
def test_generated_pretraining_configs(tmp_path, overrides):
    refused_clearly_or_runs("pretrain", overrides, tmp_path)


@settings(GENERATED, max_examples=15)
@given(overrides=overrides_for("finetune"))
def test_generated_finetuning_configs(tmp_path, overrides):
    refused_clearly_or_runs("finetune", overrides, tmp_path)


@pytest.mark.parametrize("key,at,char,expected", [("data.batch_size", 5, "", "data.batchsize"), ("lr", 2, "s", "lrs")])
def test_typo(key, at, char, expected):
    assert typo(key, at, char) == expected
