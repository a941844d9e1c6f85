"""The encoder file: safetensors weights plus JSON metadata, and its loader.

Loading never unpickles and never imports anything named in the file: the architecture is
looked up in ``encoders.BACKBONES`` and every tensor must match it by name, shape and dtype.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pretrain.encoders import BACKBONES, Encoder, EncoderError, build_encoder
from pretrain.files import atomic_write

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
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_encoder(path: str | os.PathLike) -> EncoderFile:
    """Rebuild an encoder from its file alone; every problem with the file is an EncoderFileError."""
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
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as err:
        raise EncoderFileError(f"{path} is not a readable safetensors file: {err}") from None
    metadata = _parse_metadata(path, header)
    try:
        encoder = build_encoder(
            metadata["arch"], metadata["input_shape"], depth=metadata["depth"], **metadata["options"]
        )
    except EncoderError as err:
        raise EncoderFileError(f"{path}: its metadata describes no buildable encoder: {err}") from None
    _check_tensors(path, encoder, tensors)
    encoder.load_state_dict(tensors, strict=True)
    return EncoderFile(encoder.eval(), metadata)


def _parse_metadata(path: Path, header: dict[str, str]) -> dict[str, Any]:
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
    expected = {
        "arch": str,
        "input_shape": list,
        "options": dict,
        "normalization": dict,
        "pretext": dict,
        "data": dict,
    }
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise EncoderFileError(f"{path}: metadata '{key}' must be a {kind.__name__}, found {meta.get(key)!r}")
    if meta["arch"] not in BACKBONES:
        raise EncoderFileError(
            f"{path}: unknown architecture {meta['arch']!r}; known architectures are {sorted(BACKBONES)}"
        )
    if not isinstance(meta.get("depth"), int) or isinstance(meta["depth"], bool) or meta["depth"] < 1:
        raise EncoderFileError(f"{path}: metadata 'depth' must be a positive block count, found {meta.get('depth')!r}")
    shape = meta["input_shape"]
    if len(shape) != 3 or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape):
        raise EncoderFileError(f"{path}: input_shape must be three positive sizes (C, H, W), found {shape!r}")
    norm = meta["normalization"]
    for key in ("mean", "std"):
        values = norm.get(key)
        if (
            not isinstance(values, list)
            or len(values) != shape[0]
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise EncoderFileError(f"{path}: normalization.{key} must be {shape[0]} number(s), found {values!r}")
    if not all(v > 0 for v in norm["std"]):
        raise EncoderFileError(f"{path}: normalization.std must be positive, found {norm['std']!r}")
    if not isinstance(meta["pretext"].get("task"), str):
        raise EncoderFileError(f"{path}: metadata pretext.task must name the pretext task")
    return meta


def _check_tensors(path: Path, encoder: Encoder, tensors: dict[str, torch.Tensor]) -> None:
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise EncoderFileError(
            f"{path}: tensors do not match a {encoder.arch} encoder: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise EncoderFileError(
                f"{path}: tensor {name} is {got.dtype} {tuple(got.shape)}, "
                f"but the architecture needs {want.dtype} {tuple(want.shape)}"
            )


def export_checkpoint(checkpoint_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Turn a Lightning checkpoint of a pretext task into an encoder file.

    The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values
    only, so a hostile checkpoint cannot run code here.
    """
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderFileError(f"checkpoint {checkpoint_path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a file it refuses
        raise EncoderFileError(f"{checkpoint_path} is not a checkpoint that loads safely: {err}") from None
    info = checkpoint.get("pretext_encoder") if isinstance(checkpoint, dict) else None
    if not isinstance(info, dict):
        raise EncoderFileError(f"{checkpoint_path} was not written by a pretext task of this project")
    try:
        encoder = build_encoder(info["arch"], info["input_shape"], depth=info["depth"], **info["options"])
    except (KeyError, TypeError, EncoderError) as err:
        raise EncoderFileError(f"{checkpoint_path}: its encoder description is unusable: {err}") from None
    prefix = "encoder."
    # A task that stores its encoder reparametrized (the GAN's spectral norm) records the plain weights.
    state = info.get("state_dict") or {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    _check_tensors(Path(checkpoint_path), encoder, state)
    encoder.load_state_dict(state)
    return save_encoder(
        out,
        encoder,
        mean=info["mean"],
        std=info["std"],
        pretext={"task": info["task"], "checkpoint": str(checkpoint_path), "epoch": checkpoint.get("epoch")},
        data={"name": info["data"], "classes": info["classes"]},
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
