"""``python tests/stream_ddp_probe.py PREPARED OUT``: two gloo processes on CPU each read two training epochs
and the validation split of data=stream PREPARED, and save to OUT/rankR.pt which images they were served
(by their source paths) and which the splits hold. Used by tests/test_stream.py and scripts/bench_stream.py."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pretrain.data.stream
from pretrain.data.stream import StreamDataModule, open_prepared


class FakeTrainer:
    def __init__(self, rank: int) -> None:
        self.global_rank, self.world_size = rank, 2


def path_of(self, item: dict) -> tuple[str, int]:
    return bytes(item["path"]).decode(), 0  # who the image is, instead of its pixels


def probe(rank: int, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29517", rank=rank, world_size=2)
    pretrain.data.stream.Decode.__call__ = path_of  # in this process: the loaders have no worker processes
    dm = StreamDataModule(name="stream", root=root, num_workers=0, val_size=0.1, batch_size=8, image_size=[8, 8])
    dm.trainer = FakeTrainer(rank)
    dm.setup("fit")
    paths = open_prepared(root).index["train"]["paths"]
    loader = dm.train_dataloader()
    seen = {
        "train": [[p for batch, _ in loader for p in batch] for _ in range(2)],
        "val": [p for batch, _ in dm.val_dataloader() for p in batch],
        "train_set": paths[dm.train_set.images.positions.numpy()].tolist(),
        "val_set": paths[dm.val_set.images.positions.numpy()].tolist(),
    }
    torch.save(seen, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(probe, args=(sys.argv[1], sys.argv[2]), nprocs=2)
