"""An encoder file as a self-contained program that needs only torch: ``python -m pretrain.portable``.

``torch.export`` traces raw images -> normalization by the file's mean and std -> the encoder's
blocks -> one feature vector per image, for any batch size, into a ``.pt2`` file. Elsewhere::

    features = torch.export.load("encoder.pt2").module()(images)  # uint8 (B, C, H, W) -> (B, D)

No Pretext, no Python class of ours: the file holds the graph and the weights. It is written only
after it gives the same features as the encoder file on a test batch.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from torch import Tensor, nn

from pretrain.encoders import Encoder, readout
from pretrain.export import EncoderFile, EncoderFileError, load_encoder
from pretrain.run.files import atomic_write


class Features(nn.Module):
    """uint8 images (0..255) to the encoder's pooled (``mean``) or flattened features."""

    def __init__(self, encoder: Encoder, mean: list[float], std: list[float], pool: str) -> None:
        super().__init__()
        self.encoder, self.pool = encoder.eval(), readout(pool, encoder.block_shapes()[-1])[0]
        # (x / 255 - mean) / std as one multiply-add, in buffers so that the program carries them.
        std_t = torch.tensor(std).view(-1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std_t))
        self.register_buffer("shift", torch.tensor(mean).view(-1, 1, 1) / std_t)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.encoder(images.float() * self.scale - self.shift))


def portable(loaded: EncoderFile, blocks: int | None = None, pool: str = "mean") -> torch.export.ExportedProgram:
    """The exported program of ``loaded``'s lower ``blocks`` (default all), checked against ``loaded.features``."""
    encoder = loaded.encoder if blocks is None else loaded.encoder.truncated(blocks)
    model = Features(encoder, loaded.mean, loaded.std, pool)
    example = torch.randint(0, 256, (2, *encoder.input_shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    check = torch.randint(
        0, 256, (3, *encoder.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    expected = loaded.features(check, blocks, pool)
    if not torch.allclose(program.module()(check), expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the exported program's features differ from the encoder file's; nothing was written")
    return program


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.portable",
        description="Write an encoder file as a torch.export program (.pt2) that needs only torch to run.",
    )
    parser.add_argument("encoder", type=Path, help="an encoder file written by python -m pretrain")
    parser.add_argument("out", type=Path, help="the program to write, e.g. encoder.pt2")
    parser.add_argument("--blocks", type=int, help="use the lower N blocks (default: all)")
    parser.add_argument("--pool", choices=("mean", "flatten"), default="mean", help="average over positions, or not")
    args = parser.parse_args()
    try:
        loaded = load_encoder(args.encoder)
        if args.blocks is not None and not 1 <= args.blocks <= len(loaded.encoder):
            raise EncoderFileError(f"--blocks {args.blocks}: the encoder has {len(loaded.encoder)} blocks")
        if not args.out.parent.is_dir() or args.out.is_dir():
            raise EncoderFileError(f"{args.out}: give a file name in an existing folder, e.g. encoder.pt2")
        program = portable(loaded, args.blocks, args.pool)
    except EncoderFileError as err:
        parser.exit(2, f"error: {err}\n")
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer, not our temporary file
    torch.export.save(program, buffer)
    atomic_write(args.out, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    print(f"program written to {args.out}: torch.export.load('{args.out}').module()(uint8 images) -> features")


if __name__ == "__main__":
    main()
