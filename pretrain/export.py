"""The encoder file: safetensors weights plus JSON metadata, and its loader.

Loading never unpickles and never imports anything named in the file: the architecture is
looked up in ``encoders.BACKBONES`` and every tensor must match it by name, shape and dtype.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from pretrain.encoders import BACKBONES, Encoder, build_encoder
from pretrain.files import atomic_write
from pretrain.typecheck import describe, fits, parameter_types

FORMAT = "pretext-encoder"
FORMAT_VERSION = 1
METADATA_KEY = "pretext"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".pkl", ".bin")


class EncoderFileError(ValueError):
    """An encoder file is missing, malformed, or does not describe a known encoder."""


@dataclass(frozen=True)
class EncoderFile:
    encoder: Encoder
    metadata: dict[str, Any]

    @property
    def mean(self) -> list[float]:
        return self.metadata["normalization"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.metadata["normalization"]["std"]

    @property
    def pretext_task(self) -> str:
        return self.metadata["pretext"]["task"]


def versions() -> dict[str, str]:
    import lightning
    import safetensors
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "safetensors": safetensors.__version__,
    }


def save_encoder(
    path: str | os.PathLike,
    encoder: Encoder,
    *,
    mean: list[float],
    std: list[float],
    pretext: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``encoder`` (weights and architecture) with its provenance, atomically."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **encoder.spec(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "pretext": pretext,
        "data": data,
        "metrics": metrics or {},
        "versions": versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    header = {METADATA_KEY: json.dumps(metadata, default=str)}
    # Written from Python: a full disk then raises OSError(ENOSPC) (safetensors' own writer raises its own error type).
    blob = safetensors_bytes(tensors, metadata=header)
    return atomic_write(path, lambda tmp: tmp.write_bytes(blob), size=len(blob))


def load_encoder(path: str | os.PathLike) -> EncoderFile:
    """Rebuild an encoder from its file alone; every problem with the file is an EncoderFileError.

    The file is judged before any tensor is read: the header length against the file size,
    the metadata against the schema, and every tensor's name, shape and dtype (from the
    header) against the architecture the metadata names, built on the meta device. Only then
    are the tensors read, so what is allocated is bounded by the file's own size.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EncoderFileError(
            f"{path} looks like a pickled checkpoint, which can run code when loaded and is never opened "
            "here. Turn a pretext-task checkpoint into an encoder file with "
            f"`python -m pretrain.export {path} OUT.safetensors` and pass that file instead."
        )
    if not path.is_file():
        raise EncoderFileError(
            f"encoder file {path} does not exist: pass the encoder.safetensors that "
            "`python -m pretrain` wrote, or encoder=none to train from scratch"
        )
    _check_header_length(path)
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # noqa: BLE001 - safetensors reports a malformed file in several ways
        raise EncoderFileError(f"{path} is not a readable safetensors file: {err}") from None
    with handle as f:
        try:
            header = f.metadata() or {}
            found = {k: _slice_spec(f.get_slice(k)) for k in f.keys()}  # noqa: SIM118 - not iterable
        except Exception as err:  # noqa: BLE001
            raise EncoderFileError(f"{path} is not a readable safetensors file: {err}") from None
        metadata = _parse_metadata(path, header, len(found))
        _check_tensors(path, metadata, found)
        encoder = build_encoder(
            metadata["arch"], metadata["input_shape"], depth=metadata["depth"], **metadata["options"]
        )
        try:
            tensors = {k: f.get_tensor(k) for k in found}
            encoder.load_state_dict(tensors, strict=True)
        except Exception as err:  # noqa: BLE001 - e.g. the file changed while it was read
            raise EncoderFileError(f"{path}: its tensors cannot be read: {err}") from None
    return EncoderFile(encoder.eval(), metadata)


TensorSpec = tuple[tuple[int, ...], torch.dtype | str]

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

MAX_HEADER_BYTES = 8 * 1024 * 1024
"""An encoder's header (tensor table plus metadata) is a few hundred kB at most; a larger
declared length means a corrupted or foreign file, refused before anything is read."""

MAX_SIDE = 4096
"""Largest image side (and channel count) an encoder file may declare."""

METADATA_KEYS = {
    "format": str,
    "format_version": int,
    "arch": str,
    "input_shape": list,
    "options": dict,
    "depth": int,
    "normalization": dict,
    "pretext": dict,
    "data": dict,
    "metrics": dict,
    "versions": dict,
    "created": str,
}
"""Every key of the metadata (format version 1) and its JSON type; all are required, no other is allowed.
``pretext``, ``data``, ``metrics``, ``versions`` and ``created`` are provenance: kept as data, never
interpreted (a ``_target_`` in ``pretext.config`` records the task's class, it is never imported)."""


def _check_header_length(path: Path) -> None:
    size = path.stat().st_size
    if size < 8:
        raise EncoderFileError(f"{path} is {size} bytes long: too short to be a safetensors file (truncated?)")
    with open(path, "rb") as f:
        declared = int.from_bytes(f.read(8), "little")
    if declared > MAX_HEADER_BYTES:
        raise EncoderFileError(
            f"{path} declares a {declared}-byte header, more than the {MAX_HEADER_BYTES} an encoder file can "
            "need: it is not an encoder file (a pickle or zip renamed .safetensors?) or it is corrupted"
        )
    if 8 + declared > size:
        raise EncoderFileError(
            f"{path} declares a {declared}-byte header but holds only {size - 8} bytes after the length: "
            "the file is truncated or not a safetensors file"
        )


def _slice_spec(tensor_slice: Any) -> TensorSpec:
    dtype = tensor_slice.get_dtype()
    return tuple(tensor_slice.get_shape()), SAFETENSORS_DTYPES.get(dtype, dtype)


def _parse_metadata(path: Path, header: dict[str, str], num_tensors: int) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise EncoderFileError(f"{path} has no '{METADATA_KEY}' metadata: it was not written by `python -m pretrain`")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise EncoderFileError(f"{path}: its metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EncoderFileError(f"{path}: metadata 'format' must be {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise EncoderFileError(
            f"{path}: format_version {meta.get('format_version')!r} is not supported (this is version {FORMAT_VERSION})"
        )
    missing = sorted(set(METADATA_KEYS) - set(meta))
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if missing or unknown:
        raise EncoderFileError(
            f"{path}: metadata keys do not match format version {FORMAT_VERSION}: "
            f"missing {missing}, unexpected {unknown}"
        )
    for key, kind in METADATA_KEYS.items():
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise EncoderFileError(f"{path}: metadata '{key}' must be a {kind.__name__}, found {meta[key]!r}")
    check_spec(path, meta, num_tensors)
    if not isinstance(meta["pretext"].get("task"), str):
        raise EncoderFileError(f"{path}: metadata pretext.task must name the pretext task")
    if not isinstance(meta["data"].get("name"), str):
        raise EncoderFileError(f"{path}: metadata data.name must name the data set")
    classes = meta["data"].get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise EncoderFileError(f"{path}: metadata data.classes must be a list of class names, found {classes!r}")
    if not all(isinstance(v, str) for v in meta["versions"].values()):
        raise EncoderFileError(f"{path}: metadata 'versions' must map library names to version strings")
    return meta


def check_spec(source: Path, spec: dict[str, Any], num_tensors: int) -> None:
    """Check the architecture part of an encoder description (``arch``, ``input_shape``,
    ``options``, ``depth``, ``normalization``) without building anything.

    ``num_tensors`` (how many tensors the file holds) bounds every list option and the depth:
    each block of every architecture has at least one tensor, so a longer list cannot match.
    """
    arch = spec.get("arch")
    if not isinstance(arch, str) or arch not in BACKBONES:
        raise EncoderFileError(
            f"{source}: unknown architecture {arch!r}; known architectures are {sorted(BACKBONES)} "
            "(an encoder file names a registered architecture, never code to import)"
        )
    depth = spec.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= max(num_tensors, 1):
        raise EncoderFileError(
            f"{source}: metadata 'depth' must be a block count from 1 to {num_tensors}, found {depth!r}"
        )
    shape = spec.get("input_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE for d in shape)
    ):
        raise EncoderFileError(
            f"{source}: input_shape must be three sizes (C, H, W) from 1 to {MAX_SIDE}, found {shape!r}"
        )
    options = spec.get("options")
    if not isinstance(options, dict):
        raise EncoderFileError(f"{source}: metadata 'options' must be a dict, found {options!r}")
    params = parameter_types(BACKBONES[arch])
    params.pop("input_shape", None)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise EncoderFileError(f"{source}: {unknown} are not options of {arch}; its options are {sorted(params)}")
    for key, value in options.items():
        if not fits(value, params[key].annotation):
            raise EncoderFileError(
                f"{source}: option {key}={value!r} of {arch} must be {describe(params[key].annotation)}"
            )
        if isinstance(value, list) and len(value) > num_tensors:
            raise EncoderFileError(
                f"{source}: option {key} lists {len(value)} entries, more than the {num_tensors} tensors the file holds"
            )
    norm = spec.get("normalization")
    if not isinstance(norm, dict):
        raise EncoderFileError(f"{source}: metadata 'normalization' must be a dict, found {norm!r}")
    for key in ("mean", "std"):
        values = norm.get(key)
        if (
            not isinstance(values, list)
            or len(values) != shape[0]
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        ):
            raise EncoderFileError(
                f"{source}: normalization.{key} must be {shape[0]} finite number(s), found {values!r}"
            )
    if not all(v > 0 for v in norm["std"]):
        raise EncoderFileError(f"{source}: normalization.std must be positive, found {norm['std']!r}")


def _expected_tensors(source: Path, spec: dict[str, Any]) -> dict[str, TensorSpec]:
    """Names, shapes and dtypes of the encoder ``spec`` describes, from a build on the meta
    device: nothing is allocated, whatever sizes the description asks for."""
    try:
        with torch.device("meta"):
            encoder = build_encoder(spec["arch"], spec["input_shape"], depth=spec["depth"], **spec["options"])
    except Exception as err:  # noqa: BLE001 - any failure to build is a bad description
        raise EncoderFileError(f"{source}: its metadata describes no buildable encoder: {err}") from None
    return {k: (tuple(v.shape), v.dtype) for k, v in encoder.state_dict().items()}


def _check_tensors(source: Path, spec: dict[str, Any], found: dict[str, TensorSpec]) -> None:
    """Every tensor the architecture needs, with its shape and dtype, and no other."""
    expected = _expected_tensors(source, spec)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise EncoderFileError(
            f"{source}: tensors do not match a {spec['arch']} encoder: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, (shape, dtype) in expected.items():
        if found[name] != (shape, dtype):
            got_shape, got_dtype = found[name]
            raise EncoderFileError(
                f"{source}: tensor {name} is {got_dtype} {got_shape}, but the architecture needs {dtype} {shape}"
            )


def export_checkpoint(checkpoint_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Turn a Lightning checkpoint of a pretext task into an encoder file.

    The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values
    only, so a hostile checkpoint cannot run code here. Its encoder description is checked
    like an encoder file's metadata, and its tensors like an encoder file's.
    """
    source, out = Path(checkpoint_path), Path(out)
    if out.suffix.lower() in PICKLE_SUFFIXES:
        raise EncoderFileError(f"{out}: an encoder file is safetensors, not a pickle: name it e.g. encoder.safetensors")
    if not source.is_file():
        raise EncoderFileError(f"checkpoint {source} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        reason = detail.group(1).split(". ")[0].rstrip(".") if detail else "unsupported content"
        raise EncoderFileError(
            f"refused to load {source}: it holds more than tensors and plain values ({reason}), "
            "and loading it could run code. "
            "Only checkpoints written by `python -m pretrain` can be exported."
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file it refuses
        raise EncoderFileError(f"{source} is not a checkpoint that loads safely: {err}") from None
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
    spec = {**info, "normalization": {"mean": info.get("mean"), "std": info.get("std")}}
    check_spec(source, spec, len(tensors))
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise EncoderFileError(f"{source}: its encoder state holds values that are not tensors")
    _check_tensors(source, spec, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()})
    if not isinstance(info.get("task"), str):
        raise EncoderFileError(f"{source}: its encoder description names no pretext task")
    encoder = build_encoder(info["arch"], info["input_shape"], depth=info["depth"], **info["options"])
    encoder.load_state_dict(tensors)
    classes = info.get("classes") or []
    return save_encoder(
        out,
        encoder,
        mean=info["mean"],
        std=info["std"],
        pretext={"task": info["task"], "checkpoint": str(source), "epoch": checkpoint.get("epoch")},
        data={"name": str(info.get("data")), "classes": [str(c) for c in classes]},
    )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pretrain.export", description="Write the encoder of a pretext-task checkpoint to a file."
    )
    parser.add_argument("checkpoint", help="a .ckpt written by `python -m pretrain` (RUN/checkpoints/last.ckpt)")
    parser.add_argument("out", help="the encoder file to write, e.g. encoder.safetensors")
    args = parser.parse_args()
    try:
        path = export_checkpoint(args.checkpoint, args.out)
    except EncoderFileError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"encoder written to {path}")


if __name__ == "__main__":
    main()
