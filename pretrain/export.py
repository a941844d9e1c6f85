"""``python -m pretrain.export CHECKPOINT OUT``: write the encoder of a pretext-task checkpoint to a file."""

from __future__ import annotations

from pretrain.encoder_file.checkpoint import export_checkpoint
from pretrain.encoder_file.format import EncoderFileError


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
