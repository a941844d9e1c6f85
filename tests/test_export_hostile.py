"""Hostile and broken encoder files and checkpoints: each is refused with an EncoderFileError
that says what is wrong; none runs code, and none makes the loader allocate what the file does
not hold."""

from __future__ import annotations

import json
import pathlib
import pickle
import resource
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from pretrain.encoders import BACKBONES, build_encoder
from pretrain.export import (
    MAX_HEADER_BYTES,
    METADATA_KEY,
    EncoderFileError,
    export_checkpoint,
    load_encoder,
    save_encoder,
)


class Touch:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def valid(path: pathlib.Path) -> pathlib.Path:
    torch.manual_seed(0)
    encoder = build_encoder("mlp", (1, 8, 8), widths=[8, 4])
    return save_encoder(path, encoder, mean=[0.5], std=[0.25], pretext={"task": "autoencoder"}, data={"name": "d"})


def parts(path: pathlib.Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[METADATA_KEY]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def rewrite(path: pathlib.Path, meta: dict | str, tensors: dict[str, torch.Tensor]) -> pathlib.Path:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={METADATA_KEY: text})
    return path


def refused(path: pathlib.Path, match: str) -> None:
    with pytest.raises(EncoderFileError, match=match):
        load_encoder(path)


@pytest.fixture
def good(tmp_path) -> pathlib.Path:
    return valid(tmp_path / "good.safetensors")


@pytest.fixture
def fresh(good):
    """Rewrites the valid file before each generated example (hypothesis reuses the fixture)."""
    original = good.read_bytes()

    def rewrite_valid() -> pathlib.Path:
        good.write_bytes(original)
        return good

    return rewrite_valid


def test_the_valid_file_loads(good):
    assert load_encoder(good).encoder.block_names == ["dense1", "dense2"]


@pytest.mark.parametrize("keep", [0, 5, 8, 60, -1])
def test_truncated_file(good, keep):
    raw = good.read_bytes()
    good.write_bytes(raw[: keep if keep >= 0 else len(raw) - 10])
    refused(good, "too short|truncated|not a readable safetensors")


def test_corrupted_header(good):
    raw = bytearray(good.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 + n // 3 : 8 + n // 3 + 12] = b'\xff{{{]]]\x00""\'x'
    good.write_bytes(bytes(raw))
    refused(good, "not a readable safetensors file")


def test_huge_declared_header_length_is_refused_before_reading(tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    refused(path, f"declares a {2**62}-byte header, more than the {MAX_HEADER_BYTES}")
    path.write_bytes((4096).to_bytes(8, "little") + b"{}")
    refused(path, "declares a 4096-byte header but holds only 2 bytes")


def test_pickle_renamed_safetensors_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"state_dict": Touch(marker)}))
    zipped = tmp_path / "zip.safetensors"
    torch.save({"state_dict": Touch(marker)}, zipped)  # torch's zip format, as a .pt would be
    for path in (raw, zipped):
        refused(path, "declares a .*-byte header|not a readable")
    assert not marker.exists()


def test_pickled_checkpoints_are_refused_by_export_and_run_no_code(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": Touch(marker)}))
    zipped = tmp_path / "zip.ckpt"
    torch.save({"state_dict": Touch(marker), "pretext_encoder": {}}, zipped)
    for path in (raw, zipped):
        with pytest.raises(EncoderFileError, match="refused to load .*could run code"):
            export_checkpoint(path, tmp_path / "out.safetensors")
    out = subprocess.run(
        [sys.executable, "-m", "pretrain.export", zipped, tmp_path / "out.safetensors"], capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.startswith("error: refused to load") and "Traceback" not in out.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def mutate(path: pathlib.Path, **changes) -> pathlib.Path:
    meta, tensors = parts(path)
    for key, value in changes.items():
        target = meta
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        if value is DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return rewrite(path, meta, tensors)


DELETE = object()


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"arch": "transformer9000"}, "unknown architecture 'transformer9000'"),
        ({"arch": "os.system"}, "unknown architecture 'os.system'.*never code to import"),
        ({"arch": "pretrain.encoders.mlp"}, "unknown architecture"),
        ({"options__activation": "torch.nn.ReLU"}, "no buildable encoder: unknown activation"),
        ({"options__widths": {"_target_": "os.system"}}, "option widths=.* must be list of int"),
        ({"options__hook": "builtins.exec"}, r"\['hook'\] are not options of mlp"),
        ({"_target_": "os.system"}, r"unexpected \['_target_'\]"),
        ({"normalization": DELETE}, r"missing \['normalization'\]"),
        ({"depth": True}, "'depth' must be a int"),
        ({"depth": 10**9}, "'depth' must be a block count"),
        ({"input_shape": [1, 8]}, "input_shape must be three sizes"),
        ({"input_shape": [1, 10**6, 10**6]}, "input_shape must be three sizes"),
        ({"normalization__std": [0.0]}, "std must be positive"),
        ({"normalization__mean": [float("nan")]}, "finite number"),
        ({"format_version": 2}, "format_version 2 is not supported"),
        ({"pretext__task": 3}, "pretext.task must name"),
        ({"versions__torch": ["x"]}, "versions"),
        # Sizes no real file could hold: judged on the meta device, so nothing is allocated.
        (
            {"options__widths": [10**12, 4]},
            r"tensor blocks.dense1.1.weight is .* needs torch.float32 \(1000000000000, 64\)",
        ),
        (
            {"input_shape": [4096, 4096, 4096], "normalization": {"mean": [0] * 4096, "std": [1] * 4096}},
            r"needs torch.float32 \(8, 68719476736\)",
        ),
        ({"options__widths": [8] * 100}, "lists 100 entries, more than the 4 tensors"),
    ],
)
def test_bad_metadata(good, changes, message):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(mutate(good, **changes), message)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: nothing big was allocated


def test_metadata_that_is_not_a_json_object(good):
    _, tensors = parts(good)
    refused(rewrite(good, "[1, 2]", tensors), "'format' must be")
    refused(rewrite(good, "{nope", tensors), "not valid JSON")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.update({"blocks.dense1.1.weight": torch.zeros(8, 65)}), r"is torch.float32 \(8, 65\).*\(8, 64\)"),
        (lambda t: t.update({"blocks.dense1.1.weight": torch.zeros(8, 64, dtype=torch.float64)}), "is torch.float64"),
        (lambda t: t.update({"blocks.dense1.1.weight": torch.zeros(8, 64, dtype=torch.int8)}), "is torch.int8"),
        (lambda t: t.update({"blocks.extra.weight": torch.zeros(1)}), r"unexpected \['blocks.extra.weight'\]"),
        (lambda t: t.pop("blocks.dense2.0.bias"), r"missing \['blocks.dense2.0.bias'\]"),
    ],
)
def test_tensors_that_do_not_match_the_architecture(good, edit, message):
    meta, tensors = parts(good)
    edit(tensors)
    refused(rewrite(good, meta, tensors), message)


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_can_be_judged_on_the_meta_device(arch):
    """The loader builds the architecture a file names on the meta device to learn its tensor
    shapes; a builder that computes on tensors (``.item()``) would break that."""
    with torch.device("meta"):
        encoder = build_encoder(arch, (3, 32, 32))
    assert all(t.is_meta for t in encoder.state_dict().values())


def test_export_checks_the_checkpoint_like_a_file(tmp_path):
    encoder = build_encoder("mlp", (1, 8, 8), widths=[8, 4])
    info = {"arch": "mlp", "input_shape": [1, 8, 8], "options": encoder.options, "depth": 2}
    info |= {"task": "autoencoder", "mean": [0.5], "std": [0.25], "data": "digits", "classes": ["0", "1"]}
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "pretext_encoder": info, "epoch": 3}, ckpt)
    loaded = load_encoder(export_checkpoint(ckpt, tmp_path / "e.safetensors"))
    assert loaded.metadata["pretext"]["epoch"] == 3 and loaded.metadata["data"]["classes"] == ["0", "1"]
    torch.save({"state_dict": state, "pretext_encoder": {**info, "arch": "os.system"}}, ckpt)
    with pytest.raises(EncoderFileError, match="unknown architecture 'os.system'"):
        export_checkpoint(ckpt, tmp_path / "f.safetensors")
    torch.save({"state_dict": {**state, "encoder.blocks.dense1.1.bias": torch.zeros(3)}, "pretext_encoder": info}, ckpt)
    with pytest.raises(EncoderFileError, match=r"tensor blocks.dense1.1.bias is torch.float32 \(3,\)"):
        export_checkpoint(ckpt, tmp_path / "f.safetensors")
    with pytest.raises(EncoderFileError, match="not a pickle"):
        export_checkpoint(ckpt, tmp_path / "f.ckpt")
    assert not (tmp_path / "f.safetensors").exists()


# --- generated files -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metadata_paths = st.sampled_from(
    [
        "arch",
        "input_shape",
        "options",
        "options__widths",
        "options__activation",
        "options__batch_norm",
        "options__dropout",
        "depth",
        "normalization",
        "normalization__mean",
        "normalization__std",
        "pretext",
        "pretext__task",
        "data",
        "data__classes",
        "format",
        "format_version",
        "metrics",
        "versions",
        "created",
        "unexpected",
    ]
)
GENERATED = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


def loads_or_refuses(path: pathlib.Path) -> None:
    """The property: a clear EncoderFileError, or a file that really loads. Nothing else escapes."""
    try:
        loaded = load_encoder(path)
    except EncoderFileError as err:
        assert str(err) and str(path) in str(err)
        return
    loaded.encoder(torch.zeros(2, *loaded.encoder.input_shape))


@GENERATED
@given(path=metadata_paths, value=json_values | st.just(DELETE))
def test_generated_metadata(fresh, path, value):
    good = fresh()
    try:
        mutate(good, **{path: value})
    except (KeyError, TypeError):  # the parent of the key is gone or not a dict: nothing to write
        return
    loads_or_refuses(good)


@GENERATED
@given(data=st.data())
def test_generated_byte_damage(fresh, data):
    good = fresh()
    raw = bytearray(good.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    damage = data.draw(st.sampled_from(["truncate", "header", "length", "noise"]))
    if damage == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "header":  # overwrite bytes of the JSON header
        at = data.draw(st.integers(8, 8 + n - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16))
        raw[at : at + len(patch)] = patch
    elif damage == "length":
        raw[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    else:
        raw = bytearray(data.draw(st.binary(max_size=200)))
    good.write_bytes(bytes(raw))
    loads_or_refuses(good)
