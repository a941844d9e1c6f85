"""``python -m pretrain.portable ENCODER OUT``: an encoder file as a torch.export program (see
``pretrain.encoder_file.portable``)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from pretrain.encoder_file.format import EncoderFileError, load_encoder
from pretrain.encoder_file.portable import portable
from pretrain.run.files import atomic_write


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
