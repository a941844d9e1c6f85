"""A sweep's run folders named by their overrides (``seed=3 encoder=none``: ``seed-3+encoder-none``).

``hydra.sweep.subdir: ${run_folder_name:${hydra.overrides.task},${hydra.job.num}}`` in
``conf/pretrain.yaml`` and ``conf/finetune.yaml``. Each override becomes ``key-value``, joined by
``+`` in the order given: not ``=`` and ``,``, which Hydra's override grammar reads, so that a path
into a run folder (``encoder=SWEEP/task-gan+seed-0/encoder.safetensors``) needs no quoting. A value
that is a path (an encoder file) is shortened to a readable name (the file's stem, or its folder's
name for the ``encoder.safetensors`` that pretraining writes) plus a short hash of the whole path,
so that two files of one name still make two folders; characters unsafe in a folder name become
``_``, and a hash of the overrides is added then too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePath

from omegaconf import OmegaConf

UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]")  # unquoted, safe in a shell and in a Hydra override value
MAX_LENGTH = 150  # characters; file systems allow 255 bytes
GENERIC_STEMS = {"encoder", "last"}  # file names every run writes: their folder names them


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def short_value(value: str) -> str:
    """``value``, or for a path its readable name and the hash of the whole path."""
    if "/" not in value and "\\" not in value:
        return value
    path = PurePath(value.rstrip("/\\"))
    name = path.parent.name if path.stem in GENERIC_STEMS and path.parent.name else path.stem
    return f"{name}.{_hash(value)}"


def run_folder_name(overrides: Iterable[str], job_num: int) -> str:
    """One folder name for a run of a sweep from its overrides (``key=value`` strings); its job
    number if it has none."""
    items = []
    for override in overrides:
        key, sep, value = str(override).partition("=")
        items.append(key + "-" * bool(sep) + short_value(value))
    joined = "+".join(items)
    if not joined:
        return str(job_num)
    name = UNSAFE.sub("_", joined).strip(".")
    if name != joined:  # characters replaced: the hash keeps apart runs that differ only in them
        name = f"{name}.{_hash(joined)}"
    if len(name) > MAX_LENGTH:
        name = f"{name[: MAX_LENGTH - 7]}.{_hash(name)}"
    return name


OmegaConf.register_new_resolver("run_folder_name", run_folder_name, replace=True)
