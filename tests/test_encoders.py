"""Encoders: block stacks of every family, slicing, and clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import CONF
from omegaconf import OmegaConf

from pretrain.encoders import BACKBONES, EncoderError, GlobalPool, build_encoder, feature_dim, readout


@pytest.mark.parametrize("arch", sorted(BACKBONES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_family_is_a_stack_of_blocks(arch, shape):
    encoder = build_encoder(arch, shape)
    shapes = encoder.block_shapes()
    assert len(shapes) == len(encoder) + 1 and shapes[0] == shape
    out = encoder(torch.randn(2, *shape))
    assert tuple(out.shape[1:]) == shapes[-1]
    pooled = GlobalPool()(out)
    assert pooled.shape == (2, feature_dim(shapes[-1]))


def test_seed_model_a():
    encoder = build_encoder("mlp", (1, 28, 28), widths=[300, 100, 50, 50, 50], activation="selu")
    assert encoder.block_names == ["dense1", "dense2", "dense3", "dense4", "dense5"]
    assert [s[0] for s in encoder.block_shapes()[1:]] == [300, 100, 50, 50, 50]


def test_resnet_blocks():
    assert build_encoder("resnet18", (1, 28, 28)).block_names == ["stem", "layer1", "layer2", "layer3", "layer4"]


def shipped(backbone: str) -> dict:
    """The options of conf/backbone/BACKBONE.yaml."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml"))


@pytest.mark.parametrize(
    "backbone,shape,stem,kernel,out",
    [
        ("resnet18", (1, 28, 28), "auto", 3, (512, 4, 4)),  # small images keep their resolution
        ("resnet18", (3, 64, 64), "auto", 7, (512, 2, 2)),  # a quarter of the side after torchvision's stem
        ("resnet18", (3, 64, 64), "small", 3, (512, 8, 8)),
        ("resnet18", (1, 32, 32), "standard", 7, (512, 1, 1)),
        ("resnet50", (1, 32, 32), "auto", 3, (2048, 4, 4)),
        ("resnet50", (3, 64, 64), "auto", 7, (2048, 2, 2)),
    ],
)
def test_resnets_pick_their_stem_by_the_image_size(backbone, shape, stem, kernel, out):
    encoder = build_encoder(input_shape=shape, **{**shipped(backbone), "stem": stem})
    assert encoder.blocks.stem[0].kernel_size == (kernel, kernel)
    assert encoder.block_shapes()[-1] == out and encoder.options["stem"] == stem
    assert encoder(torch.randn(2, *shape)).shape == (2, *out)


def test_the_vit_small_config_is_vit_s_16_at_224_pixels():
    with torch.device("meta"):  # 22M weights and 196 tokens: the shapes, without the work
        encoder = build_encoder(input_shape=(3, 224, 224), **shipped("vit_small"))
    assert len(encoder) == 13 and encoder.block_shapes()[-1] == (196, 384)
    assert 21e6 < sum(p.numel() for p in encoder.parameters()) < 23e6


@pytest.mark.parametrize(
    "backbone,shape", [("resnet18", (3, 64, 64)), ("resnet50", (3, 64, 64)), ("vit_small", (3, 32, 32))]
)
def test_channels_last_and_bf16_compute_what_float32_does(backbone, shape):
    """What trainer=gpu runs (channels-last weights, bf16 autocast), here on the CPU, on small images."""
    torch.manual_seed(0)
    encoder = build_encoder(input_shape=shape, **shipped(backbone)).eval()  # batch norm of 2 images would amplify
    x = torch.randn(2, *shape)
    expected = encoder(x)
    encoder.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x.to(memory_format=torch.channels_last))
        encoder.train()(x.to(memory_format=torch.channels_last)).float().square().mean().backward()
    assert out.shape == expected.shape
    assert 0 < (out.float() - expected).norm() < 0.05 * expected.norm()  # bf16's rounding, and no more
    assert all(p.grad is not None and p.grad.isfinite().all() for p in encoder.parameters())


def test_truncated_shares_modules_and_rebuilds():
    encoder = build_encoder("cnn", (1, 28, 28), channels=[4, 8, 16])
    lower = encoder.truncated(2)
    assert len(lower) == 2 and lower.blocks[0] is encoder.blocks[0]
    assert lower.spec()["depth"] == 2
    assert len(build_encoder(**{k: v for k, v in lower.spec().items() if k != "options"}, **lower.options)) == 2
    with pytest.raises(EncoderError, match="choose 1..3"):
        encoder.truncated(4)


def test_selu_mlp_is_self_normalizing():
    torch.manual_seed(0)
    encoder = build_encoder("mlp", (1, 28, 28), widths=[256] * 8, activation="selu")
    out = encoder(torch.randn(512, 1, 28, 28))
    assert abs(out.mean().item()) < 0.2 and 0.7 < out.std().item() < 1.3


@pytest.mark.parametrize(
    "arch,kw,message",
    [
        ("transformer9000", {}, "unknown backbone"),
        ("mlp", {"widthz": [3]}, "its options are"),
        ("mlp", {"activation": "swishy"}, "unknown activation"),
        ("mlp", {"widths": []}, "at least one hidden width"),
        ("resnet50", {"stem": "tiny"}, "stem must be auto, small or standard, not 'tiny'"),
    ],
)
def test_bad_encoder_options(arch, kw, message):
    with pytest.raises(EncoderError, match=message):
        build_encoder(arch, (1, 8, 8), **kw)


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_readouts_give_one_vector_per_image(arch):
    encoder = build_encoder(arch, (1, 28, 28))
    shape = encoder.block_shapes()[-1]
    out = encoder(torch.randn(3, 1, 28, 28))
    flat, flat_width = readout("flatten", shape)
    mean, mean_width = readout("mean", shape)
    assert flat(out).shape == (3, flat_width) and flat_width == out[0].numel()  # every position kept
    assert mean(out).shape == (3, mean_width) and mean_width == feature_dim(shape)
    with pytest.raises(EncoderError, match="choose flatten or mean"):
        readout("max", shape)
