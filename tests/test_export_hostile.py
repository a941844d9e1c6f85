"""Hostile and broken encoder files and checkpoints: each is refused with an EncoderFileError
that says what is wrong; none runs code, and none makes the loader allocate what the file does
not hold."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch
from helpers import QUIET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from pretrain.encoder_file.checkpoint import export_checkpoint
from pretrain.encoder_file.format import MAX_HEADER_BYTES, METADATA_KEY, EncoderFileError, load_encoder, save_encoder
from pretrain.encoders import BACKBONES, build_encoder


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


@pytest.mark.slow
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
        # Sizes no real file could hold: bounded by what the file holds, or judged on the meta device.
        ({"options__widths": [10**12, 4]}, r"option widths of mlp asks for 1000000000000, more than the 556 weights"),
        ({"options__widths": [500, 4]}, r"tensor blocks.dense1.1.weight is .* needs torch.float32 \(500, 64\)"),
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


# --- files that would multiply work -------------------------------------------------------


def vit_file(path: pathlib.Path, depth: int | None = None) -> pathlib.Path:
    """A one-layer ViT (embed, block1: 15 tensors, 9,216 weights) or its lower ``depth`` blocks."""
    torch.manual_seed(0)
    encoder = build_encoder("vit", (1, 8, 8), depth=depth, patch_size=4, dim=32, layers=1, heads=2)
    return save_encoder(path, encoder, mean=[0.5], std=[0.25], pretext={"task": "masked"}, data={"name": "d"})


@contextlib.contextmanager
def bounded(seconds: float = 2.0, megabytes: float = 50.0):
    """The block must finish within ``seconds`` and allocate at most ``megabytes`` at its peak."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds and peak < megabytes * 2**20, f"{elapsed:.2f} s, {peak / 2**20:.0f} MB"


@pytest.mark.parametrize(
    "depth,changes,message",
    [
        (None, {"options__layers": 10**6}, "option layers of vit asks for 1000000, more than the 9216 weights"),
        (1, {"options__layers": 10**6}, "option layers of vit asks for 1000000, more than the 672 weights"),
        (None, {"depth": 10**6, "options__layers": 10**6}, "'depth' must be a block count from 1 to 15"),
        (None, {"depth": 12}, "'depth' is 12, but a vit with these options has 2 block"),
        (None, {"options__heads": 10**9}, "option heads of vit asks for 1000000000"),
        (None, {"options__heads": 3}, "no buildable encoder: vit: dim 32 must be a multiple of heads 3"),
        (None, {"options__dim": 10**9}, "option dim of vit asks for 1000000000"),
        (None, {"options__dim": 4096}, r"blocks.embed.position is .* needs torch.float32 \(1, 4, 4096\)"),
        (None, {"options__mlp_ratio": 1e6}, r"blocks.block1.linear1.weight is .* needs torch.float32 \(32000000, 32\)"),
        (None, {"options__mlp_ratio": float("inf")}, "no buildable encoder: cannot convert float infinity"),
        (
            None,
            {"input_shape": [1, 4096, 4096], "options__patch_size": 1},
            r"blocks.embed.position is .* needs torch.float32 \(1, 16777216, 32\)",
        ),
    ],
)
def test_descriptions_that_multiply_work_are_refused_at_the_cost_of_the_file(tmp_path, depth, changes, message):
    """Every option that multiplies work (layers, depth, widths, heads, patch counts) is bounded by
    what the file holds before anything is built; the rest is matched block by block on the meta
    device. Before, layers=10**6 built layers until memory ran out."""
    path = mutate(vit_file(tmp_path / "vit.safetensors", depth), **changes)
    with bounded():
        refused(path, message)


def stem_file(path: pathlib.Path) -> pathlib.Path:
    """The stem of a ResNet at 64 px (torchvision's 7x7 stem: 6 tensors, 9,536 weights), alone."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", (3, 64, 64), depth=1)
    return save_encoder(path, encoder, mean=[0.5] * 3, std=[0.25] * 3, pretext={"task": "masked"}, data={"name": "d"})


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"arch": "resnet50", "depth": 5}, r"tensors do not match a resnet50 encoder: missing \['blocks.layer1.0.bn1"),
        ({"arch": "resnet50", "depth": 7}, "'depth' must be a block count from 1 to 6, found 7"),
        ({"options__stem": "small"}, r"blocks.stem.0.weight is torch.float32 \(64, 3, 7, 7\), but .* \(64, 3, 3, 3\)"),
        ({"options__stem": "huge"}, r"option stem='huge' of resnet18 must be one of \['auto', 'small', 'standard'\]"),
        (
            {"input_shape": [3, 32, 32]},
            r"blocks.stem.0.weight is torch.float32 \(64, 3, 7, 7\), but .* \(64, 3, 3, 3\)",
        ),
    ],
)
def test_a_resnet_file_is_judged_by_the_weights_it_holds(tmp_path, changes, message):
    """A file that claims a ResNet-50 (24M weights) and holds a stem is refused on the meta device,
    without building one; so is a stem of the other kind than the file holds."""
    path = mutate(stem_file(tmp_path / "stem.safetensors"), **changes)
    with bounded():
        refused(path, message)


def test_a_resnet50_stem_is_a_resnet18_stem(tmp_path):
    """The stems are alike: a file of the lower block loads as either."""
    encoder = load_encoder(mutate(stem_file(tmp_path / "stem.safetensors"), arch="resnet50")).encoder
    assert encoder.arch == "resnet50" and encoder.block_names == ["stem"]
    assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, 64, 16, 16)


@pytest.mark.parametrize("depth,layers", [(1, 600), (2, 9000)])
def test_blocks_above_the_depth_of_a_file_are_never_built(tmp_path, depth, layers):
    """A truncated encoder's file names the layer count of its whole stack; only the blocks the file
    holds are built (eagerly, 9,000 layers took about a minute)."""
    path = mutate(vit_file(tmp_path / "vit.safetensors", depth), options__layers=layers, depth=depth)
    with bounded():
        encoder = load_encoder(path).encoder
    assert encoder.block_names == ["embed", "block1"][:depth] and encoder.options["layers"] == layers
    assert encoder(torch.zeros(2, 1, 8, 8)).shape == (2, 4, 32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, good, bad):
    meta, tensors = parts(good)
    tensors["blocks.dense2.0.weight"][1, 2] = bad
    refused(rewrite(good, meta, tensors), f"{good}: tensor blocks.dense2.0.weight holds NaN or infinite values")
    # export refuses to write such a file in the first place
    state = {f"encoder.{k}": v for k, v in tensors.items()}
    info = {k: meta[k] for k in ("arch", "input_shape", "options", "depth")} | {"task": "t", "mean": [0], "std": [1]}
    torch.save({"state_dict": state, "pretext_encoder": info}, tmp_path / "last.ckpt")
    with pytest.raises(EncoderFileError, match="tensor blocks.dense2.0.weight holds NaN or infinite"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "e.safetensors")
    assert not (tmp_path / "e.safetensors").exists()


def raw_file(path: pathlib.Path, header: bytes, data: bytes = b"") -> pathlib.Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def test_json_the_parser_cannot_follow(tmp_path, good):
    meta, tensors = parts(good)
    with bounded():
        refused(rewrite(good, "[" * 200_000 + "]" * 200_000, tensors), "metadata is not valid JSON .nested too deeply")
        refused(rewrite(good, json.dumps(meta)[:-1] + ', "x": ' + "[" * 200_000, tensors), "nested too deeply")
        text = json.dumps(meta).replace('"format_version": 1', '"format_version": ' + "9" * 5000)
        refused(rewrite(good, text, tensors), "metadata is not valid JSON .*digits")
        deep = raw_file(tmp_path / "deep.safetensors", b"[" * 200_000)
        refused(deep, "not a readable safetensors file: its header is not valid JSON .nested too deeply")


def test_a_name_given_twice_is_refused(tmp_path, good):
    meta, tensors = parts(good)
    text = json.dumps(meta)
    refused(rewrite(good, text[:-1] + ', "arch": "cnn"}', tensors), "metadata is not valid JSON .*'arch' appears more")
    raw = valid(tmp_path / "v.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    entry = json.dumps(header["blocks.dense2.0.bias"])
    text = json.dumps(header)[:-1] + f', "blocks.dense2.0.bias": {entry}' + "}"  # the same tensor twice
    refused(raw_file(good, text.encode(), raw[8 + n :]), "header is not valid JSON .*'blocks.dense2.0.bias' appears")


def test_paths_that_are_not_files(tmp_path, good, monkeypatch):
    (tmp_path / "folder").mkdir()
    refused(tmp_path / "folder", "encoder file .*/folder is a directory")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    signal.alarm(10)  # a FIFO without a writer must not block the loader
    try:
        refused(fifo, "pipe.safetensors is not a regular file")
    finally:
        signal.alarm(0)
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    refused(tmp_path / "zero.safetensors", "zero.safetensors is not a regular file")
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "nowhere")
    refused(tmp_path / "gone.safetensors", "gone.safetensors does not exist")
    with pytest.raises(EncoderFileError, match="encoder= is empty: .*encoder=none"):
        load_encoder("")
    good.chmod(0)
    if os.geteuid() == 0:  # root reads anything: deny it the way the kernel would
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda p, *a, **k: _denied(p) if p == str(good) else real_open(p, *a, **k))
    refused(good, "good.safetensors cannot be read: permission denied")


def _denied(path: str):
    raise PermissionError(13, "Permission denied", path)


def test_export_refuses_what_it_cannot_read_or_write(tmp_path):
    encoder = build_encoder("mlp", (1, 8, 8), widths=[8, 4])
    info = {"arch": "mlp", "input_shape": [1, 8, 8], "options": encoder.options, "depth": 2}
    info |= {"task": "autoencoder", "mean": [0.5], "std": [0.25]}
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "pretext_encoder": info}, ckpt
    )
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").touch()
    cases = [
        (ckpt, tmp_path / "folder", "folder is a directory: name the file to write, e.g. .*folder/encoder.safetensors"),
        (ckpt, tmp_path / "file" / "e.safetensors", r"cannot write .*file/e.safetensors \(File exists: .*file\)"),
        (tmp_path / "folder", tmp_path / "e.safetensors", "checkpoint .*folder is a directory"),
        (tmp_path / "nope.ckpt", tmp_path / "e.safetensors", "checkpoint .*nope.ckpt does not exist"),
    ]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:300])
    cases.append((truncated, tmp_path / "e.safetensors", "truncated.ckpt is not a checkpoint that loads .*zip archive"))
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"hello, not a checkpoint" * 4)
    cases.append((foreign, tmp_path / "e.safetensors", "foreign.ckpt is not a checkpoint that loads"))
    for source, out, message in cases:
        with pytest.raises(EncoderFileError, match=message):
            export_checkpoint(source, out)
    left = ["file", "folder", "foreign.ckpt", "last.ckpt", "truncated.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    assert not any((tmp_path / "folder").iterdir())


@pytest.mark.slow
def test_bad_paths_on_the_command_line_exit_2(tmp_path, good):
    """``python -m pretrain.export`` and ``python -m finetune encoder=...``: one line, exit 2, no traceback,
    no run folder."""
    (tmp_path / "folder").mkdir()
    deep = rewrite(tmp_path / "deep.safetensors", "[" * 200_000, parts(good)[1])
    commands = [
        (["pretrain.export", str(tmp_path / "nope.ckpt"), "e.safetensors"], "checkpoint .* does not exist"),
        (["pretrain.export", str(good), str(tmp_path / "folder")], "folder is a directory"),
        (["finetune", "encoder=", *QUIET], "encoder= is empty"),
        (["finetune", f"encoder={deep}", *QUIET], "nested too deeply"),
    ]
    for args, message in commands:
        out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2 and re.match(f"error: .*{message}", out.stderr), out.stderr
        assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.safetensors", "folder", "good.safetensors"]


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
