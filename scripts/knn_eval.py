"""k-NN accuracy of frozen features: encoder files beside the floors every one is compared against,
raw pixels and the same backbone untrained.

The measure of ``val/knn_acc`` (pretrain/run/callbacks/online_eval.py, the same functions): k=20
nearest training images by cosine similarity of the pooled features, votes weighted by
exp(similarity / 0.07), here with every image of the training split as the bank, scored on the
official test split. Every encoder sees the images normalized as it was trained; the floors see
them normalized by the training split's own mean and standard deviation.

    PRETEXT_DATA=/path/to/data python -m scripts.knn_eval --data fashion_mnist --backbone cnn \\
        --encoder outputs/pretrain/DATE/TIME/encoder.safetensors
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from pretrain.data.module import channel_stats, normalize
from pretrain.data.sources import load_source
from pretrain.encoder_file.format import load_encoder
from pretrain.encoders import build_encoder
from pretrain.run.callbacks.online_eval import knn_predict, pooled_features

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion_mnist", help="a data set with an official test split")
    parser.add_argument("--backbone", default="cnn", help="a file of conf/backbone, at random initial weights")
    parser.add_argument("--seed", type=int, default=0, help="of the random weights")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help="where the features are made")
    parser.add_argument("--encoder", type=Path, action="append", default=[], help="an encoder file (repeatable)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument(
        "--pool", choices=("mean", "flatten"), default="mean", help="average the output over positions, or keep it all"
    )
    args = parser.parse_args()
    train, test = load_source(args.data)
    mean, std = channel_stats(train.images)
    torch.manual_seed(args.seed)
    options = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / f"{args.backbone}.yaml"))
    random = build_encoder(input_shape=tuple(train.images.shape[1:]), **options)
    models = [
        ("pixels", nn.Flatten(), mean, std),
        (f"{args.backbone}, random weights (seed {args.seed})", random, mean, std),
    ]
    for path in args.encoder:
        loaded = load_encoder(path)
        models.append((f"{loaded.pretext_task} encoder {path}", loaded.encoder, loaded.mean, loaded.std))
    device = torch.device(args.device)
    for name, model, mean_, std_ in models:
        start = time.perf_counter()
        model.to(device)
        bank, features = (
            pooled_features(
                model.eval(),
                s.images,
                lambda x, m=mean_, d=std_: normalize(x, m, d),
                1024,
                device,
                args.pool,
            )
            for s in (train, test)
        )
        labels = train.labels.to(device)
        predicted = knn_predict(features, bank, labels, len(train.classes), args.k, args.temperature)
        accuracy = (predicted.cpu() == test.labels).float().mean().item()
        print(
            f"{args.data} k-NN (k={args.k}, T={args.temperature}, {args.pool} features, "
            f"{len(train.labels)} training images, "
            f"{len(test.labels)} test images), {name}: {100 * accuracy:.2f}% ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
