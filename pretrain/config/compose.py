"""Composing a config from ``conf/`` and overrides in our own code, and saying in our words
what Hydra refused in a composition.

Hydra composes the command line's config before any of our code runs, and refuses a mistyped
key (``data.batchsize=32``: "use +data.batchsize=32", the wrong fix) or group option itself.
``explain`` composes again with each refused key appended, so that ``validate_config`` names
it with the key it was meant to be; a missing option is named with the group's options.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from pretrain.config.validate import CONF, NO_CHECKS, Checks, ConfigError, did_you_mean, group_options, validate_config


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """The config ``python -m NAME OVERRIDES`` runs with: inside a command, composed from that
    command's search path; elsewhere from ``conf/``."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def explain(err: CompactHydraException, name: str, overrides: Sequence[str], own: Checks = NO_CHECKS) -> str:
    """What is wrong in ``overrides``, which Hydra refused with ``err`` when composing ``name`` (whose own
    checks are ``own``)."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except CompactHydraException:
        return _hydra_message(err)
    # A sweep's values (seed=0,1,2) compose one at a time: leave them out, the keys are the point.
    overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
    for _ in range(len(overrides)):  # each round appends one key that the config does not have
        if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or "") and err.options:
            group, _, option = err.missing_cfg_file.rpartition("/")
            return f"{group}={option} is not an option of {group}{did_you_mean(option, err.options)}"
        key = getattr(err.__cause__, "full_key", None)
        if not isinstance(err.__cause__, ConfigAttributeError | ConfigKeyError) or not key:
            break
        refused = [i for i, o in enumerate(overrides) if o.split("=", 1)[0] == key]
        if not refused:
            break
        overrides[refused[0]] = "+" + overrides[refused[0]]
        try:
            cfg = compose_config(name, overrides)
        except ConfigCompositionException as again:
            err = again
            continue
        try:
            validate_config(cfg, name, own)
        except ConfigError as found:
            return str(found)
        break
    return _hydra_message(err)


def explain_value_error(err: ValueError, overrides: Sequence[str]) -> str:
    """What Hydra's bare ValueError while composing is about: ``GROUP=null``, a group set to no option."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if value == "null" and (CONF / key).is_dir():
            return f"{key}=null: {key} is a config group and needs one of its options {group_options(key)}"
    return str(err)


def _hydra_message(err: CompactHydraException) -> str:
    """Hydra's own words, as it prints them."""
    cause = err.__cause__
    return f"{err}\n{cause}" if isinstance(cause, OmegaConfBaseException) else str(err)
