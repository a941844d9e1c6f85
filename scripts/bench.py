"""How fast the pipeline is, measured side by side with a baseline in the same run, printed as a table
(measured, baseline, ratio; medians over repeats):

    PRETEXT_DATA=../shared/data python -m scripts.bench [--sections 1,2,3,4,5] [--repeats 3]

1. the data path against torchvision's DataLoader (scripts/bench_data.py);
2. training overhead of each task and of fine-tuning against a plain PyTorch loop (bench_overhead.py);
3. start-up of a fine-tuning run from the command line, and a 10-run sweep (bench_startup.py);
4. scaling with batch size and data size, and memory (bench_scaling.py);
5. Géron's whole transfer study, scripts/fashion_study.sh (bench_study.py);
6. streamed data (data=stream) at 10,000 and 200,000 images against the in-memory targets and torchvision's
   ImageFolder (bench_stream.py; --stream-sizes).

``--gpu`` measures section 2 on a GPU (bf16-mixed, ResNet-18, batch 512), and section 6 as ResNet-50 at
224 px streamed against random tensors on the GPU (bench_stream_gpu.py). ``--tiny`` runs every
section on a few batches: it checks that the benchmark works and measures nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from scripts import (
    bench_data,
    bench_overhead,
    bench_scaling,
    bench_startup,
    bench_stream,
    bench_stream_gpu,
    bench_study,
)
from scripts.bench_common import data_root, save, table, workdir

SECTIONS = {1: bench_data, 2: bench_overhead, 3: bench_startup, 4: bench_scaling, 5: bench_study, 6: bench_stream}
GPU_SECTIONS = {2: bench_overhead, 6: bench_stream_gpu}  # --gpu: what each measures on the GPU


def main() -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections", default="1,2,3,4,5", help="which sections, e.g. 2,3 (default: 1-5; 6 makes 200,000 files)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="medians over this many repeats (default 3)")
    parser.add_argument("--study-repeats", type=int, default=1, help="repeats of section 5, ~4 min each (default 1)")
    parser.add_argument("--stream-sizes", default="10000,200000", help="section 6: the two collection sizes")
    parser.add_argument("--gpu", action="store_true", help="sections 2 and 6 on the GPU (see above)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks that the script runs, measures nothing")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--workdir", help="run folders go here (default: a temporary folder, removed)")
    args = parser.parse_args()
    try:
        sections = [int(s) for s in args.sections.split(",")]
        unknown = set(sections) - set(SECTIONS)
    except ValueError:
        unknown = {args.sections}
    if unknown:
        parser.error(f"--sections takes numbers from {sorted(SECTIONS)}, not {sorted(unknown)}")
    if args.gpu and not set(sections) <= set(GPU_SECTIONS):
        parser.error(f"--gpu measures sections {sorted(GPU_SECTIONS)} only: add --sections 2 or --sections 6")
    data_root()
    args.log = lambda line: print(line, file=sys.stderr, flush=True)
    print(
        f"# pretext benchmark: {os.cpu_count()} CPU cores, torch threads {torch_threads()}, repeats {args.repeats}"
        + (", tiny sizes (measures nothing)" if args.tiny else ""),
        flush=True,
    )
    figures, modules = [], GPU_SECTIONS if args.gpu else SECTIONS
    with workdir(args) as root:
        for number in sections:
            start = time.perf_counter()
            args.log(f"section {number}: {modules[number].__doc__.splitlines()[0]}")
            (root / f"section{number}").mkdir(parents=True, exist_ok=True)
            figures += modules[number].figures(args, root / f"section{number}")
            args.log(f"section {number} took {time.perf_counter() - start:.0f} s")
    print(table(figures), flush=True)
    if args.json:
        save(figures, args.json)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
