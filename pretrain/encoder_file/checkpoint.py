"""A pretext task's Lightning checkpoint to an encoder file, read without unpickling code."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from pretrain.encoder_file.format import (
    PICKLE_SUFFIXES,
    EncoderFileError,
    check_finite,
    check_spec,
    check_tensors,
    open_file,
    save_encoder,
)
from pretrain.encoders import build_encoder


def export_checkpoint(checkpoint_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Turn a Lightning checkpoint of a pretext task into an encoder file.

    The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values
    only, so a hostile checkpoint cannot run code here. Its encoder description is checked
    like an encoder file's metadata, and its tensors like an encoder file's.
    """
    source, out = Path(checkpoint_path), Path(out)
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise EncoderFileError(f"{out}: an encoder file is safetensors, not a pickle: name it e.g. encoder.safetensors")
    if out.is_dir():
        raise EncoderFileError(f"{out} is a directory: name the file to write, e.g. {out / 'encoder.safetensors'}")
    hint = "pass the .ckpt that `python -m pretrain` wrote (RUN/checkpoints/last.ckpt)"
    try:
        with open_file(source, "checkpoint", hint) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        reason = detail.group(1).split(". ")[0].rstrip(".") if detail else "unsupported content"
        raise EncoderFileError(
            f"refused to load {source}: it holds more than tensors and plain values ({reason}), "
            "and loading it could run code. "
            "Only checkpoints written by `python -m pretrain` can be exported."
        ) from None
    except EncoderFileError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file it refuses
        reason = f"{type(err).__name__}: {str(err).split('. ')[0]}"  # torch's first sentence; the rest is advice
        raise EncoderFileError(
            f"{source} is not a checkpoint that loads (truncated, damaged, or not written by torch.save): {reason}"
        ) from None
    info = checkpoint.get("pretext_encoder") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict) or not isinstance(state, dict):
        raise EncoderFileError(f"{source} was not written by a pretext task of this project")
    prefix = "encoder."
    # A task that stores its encoder reparametrized (the GAN's spectral norm) records the plain weights.
    plain = info.get("state_dict")
    if plain is not None and not isinstance(plain, dict):
        raise EncoderFileError(f"{source}: its recorded encoder weights are not a mapping of tensors")
    tensors = plain or {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise EncoderFileError(f"{source}: its encoder state holds values that are not named tensors")
    found = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    spec = {**info, "normalization": {"mean": info.get("mean"), "std": info.get("std")}}
    check_spec(source, spec, found)
    check_tensors(source, spec, found)
    check_finite(source, tensors)
    if not isinstance(info.get("task"), str):
        raise EncoderFileError(f"{source}: its encoder description names no pretext task")
    encoder = build_encoder(info["arch"], info["input_shape"], depth=info["depth"], **info["options"])
    encoder.load_state_dict(tensors)
    classes = info.get("classes") or []
    try:
        return save_encoder(
            out,
            encoder,
            mean=info["mean"],
            std=info["std"],
            pretext={"task": info["task"], "checkpoint": str(source), "epoch": checkpoint.get("epoch")},
            data={"name": str(info.get("data")), "classes": [str(c) for c in classes]},
        )
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise EncoderFileError(f"cannot write {out} ({err.strerror or err}{where}): choose another path") from None
