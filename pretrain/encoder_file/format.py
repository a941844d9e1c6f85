"""The encoder file: safetensors weights plus JSON metadata, and its loader.

Loading never unpickles and never imports anything named in the file: the architecture is
looked up in ``encoders.BACKBONES`` and every tensor must match it by name, shape and dtype.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import stat
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from safetensors.torch import save as safetensors_bytes

from pretrain.config.typecheck import describe, fits, parameter_types
from pretrain.data.module import normalize
from pretrain.encoders import BACKBONES, Encoder, build_encoder, encoder_blocks, readout
from pretrain.run.callbacks.finite_loss import nonfinite
from pretrain.run.files import atomic_write

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

    def features(self, images: torch.Tensor, blocks: int | None = None, pool: str = "mean") -> torch.Tensor:
        """One feature vector per image, ``(B, D)``, from raw images ``(B, C, H, W)`` of the encoder's input
        shape: uint8 0..255 or float 0..1, normalized here by the file's mean and std as in training.
        ``blocks``: the lower blocks to use (default all); ``pool``: ``mean`` averages a feature map over
        positions (or a ViT's tokens), ``flatten`` keeps all of it, as the fine-tuning head reads it."""
        if tuple(images.shape[1:]) != tuple(self.encoder.input_shape):
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])}, but the encoder takes {tuple(self.encoder.input_shape)}"
                " (channels, height, width): resize them first"
            )
        encoder = (self.encoder if blocks is None else self.encoder.truncated(blocks)).eval()
        pixels = images if images.dtype == torch.uint8 else images.float() * 255  # normalize takes 0..255
        with torch.no_grad():
            y = encoder(normalize(pixels, self.mean, self.std))
        return readout(pool, y.shape[1:])[0](y)


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

    The file is opened once, and must be a regular file. It is judged before any tensor is read:
    the header length against the file size, the metadata against the schema and against what
    the file holds, and every tensor's name, shape and dtype (from the header) against the
    architecture the metadata names, built block by block on the meta device. Only then are the
    tensors read and checked to be finite, and the lower ``depth`` blocks built to hold them, so
    that time and memory are bounded by the file's own size.
    """
    if not os.fspath(path):
        raise EncoderFileError("encoder= is empty: pass the path of an encoder.safetensors, or encoder=none")
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EncoderFileError(
            f"{path} looks like a pickled checkpoint, which can run code when loaded and is never opened "
            "here. Turn a pretext-task checkpoint into an encoder file with "
            f"`python -m pretrain.export {path} OUT.safetensors` and pass that file instead."
        )
    hint = "pass the encoder.safetensors that `python -m pretrain` wrote, or encoder=none to train from scratch"
    with open_file(path, "encoder file", hint) as f:
        size = os.fstat(f.fileno()).st_size
        header, found = _read_header(path, f, size)
        metadata = _parse_metadata(path, header, found)
        check_tensors(path, metadata, found)
        f.seek(0)
        tensors = _read_tensors(path, f.read(size), found)
    check_finite(path, tensors)
    encoder = build_encoder(metadata["arch"], metadata["input_shape"], depth=metadata["depth"], **metadata["options"])
    encoder.load_state_dict(tensors, strict=True)
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


def open_file(path: Path, what: str, hint: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file. A FIFO is opened without waiting for a
    writer (``O_NONBLOCK``) and then refused, like a device or a directory: none holds a file."""
    try:
        f = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))  # noqa: SIM115
    except FileNotFoundError:
        raise EncoderFileError(f"{what} {path} does not exist: {hint}") from None
    except IsADirectoryError:
        raise EncoderFileError(f"{what} {path} is a directory: {hint}") from None
    except PermissionError:
        raise EncoderFileError(
            f"{what} {path} cannot be read: permission denied (ask its owner to make it readable, or copy it)"
        ) from None
    except OSError as err:
        raise EncoderFileError(f"{what} {path} cannot be read ({err.strerror}): {hint}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise EncoderFileError(f"{what} {path} is not a regular file (a pipe, device or socket): {hint}")
    return f


def _json(text: str | bytes, failure: str) -> Any:
    """``text`` parsed as JSON, or an EncoderFileError ``failure (why)``: a syntax error, a key given
    twice (``json`` would keep the last silently), nesting deeper than the parser can follow, or
    an integer longer than Python's int() limit."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            twice = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
            raise ValueError(f"the key {twice!r} appears more than once")
        return obj

    try:
        return json.loads(text, object_pairs_hook=unique)
    except RecursionError:
        raise EncoderFileError(f"{failure} (nested too deeply)") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int() digit limit, a repeated key
        raise EncoderFileError(f"{failure} ({err})") from None


def _read_header(path: Path, f: BinaryIO, size: int) -> tuple[dict[str, str], dict[str, TensorSpec]]:
    """The safetensors header of the open file ``f`` of ``size`` bytes: its string metadata, and each
    tensor's shape and dtype. Offsets are left to safetensors itself, which checks them when the
    tensors are read."""
    if size < 8:
        raise EncoderFileError(f"{path} is {size} bytes long: too short to be a safetensors file (truncated?)")
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
    unreadable = f"{path} is not a readable safetensors file"
    header = _json(f.read(declared), f"{unreadable}: its header is not valid JSON")
    if not isinstance(header, dict):
        raise EncoderFileError(f"{unreadable}: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise EncoderFileError(f"{unreadable}: its __metadata__ must map names to strings")
    found = {}
    for name, entry in header.items():
        dtype, shape = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else (None, None)
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise EncoderFileError(f"{unreadable}: tensor {name!r} has no dtype and shape")
        found[name] = tuple(shape), SAFETENSORS_DTYPES.get(dtype, dtype)
    return metadata, found


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_tensors(path: Path, data: bytes, found: dict[str, TensorSpec]) -> dict[str, torch.Tensor]:
    """The tensors of the whole file ``data``, as safetensors reads them: it checks every offset
    against the shape and the file's length."""
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # noqa: BLE001 - safetensors reports a malformed file in several ways
        raise EncoderFileError(f"{path} is not a readable safetensors file (truncated?): {err}") from None
    if {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} != found:  # the file changed under us
        raise EncoderFileError(f"{path} changed while it was read: load it again")
    return tensors


def check_finite(source: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite weights, which no training step can recover from, naming the first."""
    bad = nonfinite(tensors)
    if bad:
        raise EncoderFileError(
            f"{source}: tensor {bad[0]} holds NaN or infinite values: the training it comes from diverged; "
            "export an earlier checkpoint"
        )


def _parse_metadata(path: Path, header: dict[str, str], found: dict[str, TensorSpec]) -> dict[str, Any]:
    if METADATA_KEY not in header:
        raise EncoderFileError(f"{path} has no '{METADATA_KEY}' metadata: it was not written by `python -m pretrain`")
    meta = _json(header[METADATA_KEY], f"{path}: its metadata is not valid JSON")
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
    check_spec(path, meta, found)
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


def check_spec(source: Path, spec: dict[str, Any], found: dict[str, TensorSpec]) -> None:
    """Check the architecture part of an encoder description (``arch``, ``input_shape``,
    ``options``, ``depth``, ``normalization``) without building anything.

    What the file holds (``found``: its tensors' shapes) bounds what the description may ask for:
    every block of every architecture has at least one tensor, so the depth and the length of a
    list option are at most the tensor count; every integer option (a width, a layer or head
    count, a patch size) counts parts that hold at least one weight each, so it is at most the
    file's weight count. A truncated file carries the options of its whole stack: those above its
    depth are never built, and are held to the same bound.
    """
    num_tensors = len(found)
    num_weights = sum(math.prod(shape) for shape, _ in found.values())
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
        too_large = [v for v in (value if isinstance(value, list) else [value]) if _is_size(v) and v > num_weights]
        if too_large:
            raise EncoderFileError(
                f"{source}: option {key} of {arch} asks for {too_large[0]}, more than the {num_weights} weights "
                "the file holds: the metadata does not describe this file"
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


def check_tensors(source: Path, spec: dict[str, Any], found: dict[str, TensorSpec]) -> None:
    """Every tensor the architecture needs, with its shape and dtype, and no other.

    The architecture is built one block at a time on the meta device (nothing is allocated,
    whatever sizes the description asks for), and each block is matched against the file before
    the next is built: a description of more than the file holds is refused at the first block
    the file lacks, so the work done is bounded by the file.
    """
    arch, built, expected = spec["arch"], 0, set()
    try:
        with torch.device("meta"):
            for block, module in islice(encoder_blocks(arch, spec["input_shape"], **spec["options"]), spec["depth"]):
                needs = {f"blocks.{block}.{k}": (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}
                missing = sorted(set(needs) - set(found))
                if missing:
                    raise EncoderFileError(f"{source}: tensors do not match a {arch} encoder: missing {missing[:5]}")
                for name, (shape, dtype) in needs.items():
                    if found[name] != (shape, dtype):
                        got_shape, got_dtype = found[name]
                        raise EncoderFileError(
                            f"{source}: tensor {name} is {got_dtype} {got_shape}, but the architecture needs "
                            f"{dtype} {shape}"
                        )
                expected |= needs.keys()
                built += 1
    except EncoderFileError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to build is a bad description
        raise EncoderFileError(f"{source}: its metadata describes no buildable encoder: {err}") from None
    if built < spec["depth"]:
        raise EncoderFileError(
            f"{source}: metadata 'depth' is {spec['depth']}, but a {arch} with these options has {built} block(s)"
        )
    extra = sorted(set(found) - expected)
    if extra:
        raise EncoderFileError(f"{source}: tensors do not match a {arch} encoder: unexpected {extra[:5]}")
