"""``python -m pretrain.prepare SOURCE OUT``: prepare an image collection for ``data=stream``
(see ``pretrain.data.prepare``)."""

from __future__ import annotations

import argparse

from pretrain.data.images import DataError


def main(argv: list[str] | None = None) -> None:
    from pretrain.data.prepare import BUILT_IN, prepare
    from pretrain.run.cli import refuse

    parser = argparse.ArgumentParser(
        prog="python -m pretrain.prepare",
        description="Prepare images once into streamable litdata shards with an index, for data=stream data.root=OUT.",
    )
    parser.add_argument(
        "source", help=f"a folder of class subfolders (or of unlabeled images), a CSV of path,label, or {BUILT_IN}"
    )
    parser.add_argument("out", help="the folder to write (new, or a half-finished preparation to start again)")
    parser.add_argument("--max-side", type=int, default=None, help="shrink larger images to this longer side")
    parser.add_argument("--workers", type=int, default=2, help="worker processes encoding images (default 2)")
    parser.add_argument("--on-bad-file", choices=("error", "skip"), default="error", help="unreadable images")
    parser.add_argument("--root", default=None, help="the data folder of a built-in set (default: $PRETEXT_DATA)")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.source, args.out, args.max_side, args.workers, args.on_bad_file, args.root)
    except DataError as err:
        refuse(err)
    counts = ", ".join(f"{split}: {s['count']} images" for split, s in meta["splits"].items())
    classes = f"{len(meta['classes'])} classes" if meta["classes"] else "unlabeled"
    print(f"prepared {args.out} ({counts}; {classes}); train on it with data=stream data.root={args.out}")


if __name__ == "__main__":
    main()
