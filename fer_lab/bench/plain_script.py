"""The hand-written training script `make bench` times `python -m fer_lab.train` against.

    python -m fer_lab.bench.plain_script spec.json

What a researcher would write by hand for the same FER2013 run, in plain PyTorch: the same
network (fer_lab's class, built from the spec, in torch's default NCHW layout), Adam, batch
size, epochs and pixel scaling (/255), the three splits read from an uncompressed .npz of
uint8 faces. Each epoch trains on the train split in a shuffled order and scores the
validation split; the best epoch's weights are saved with `torch.save`, and they score the
test split once at the end. It imports torch, numpy and `fer_lab.models` (torch only): no
Hydra, Lightning, albumentations or MLflow. The spec (JSON) and the .npz are written by
`fer_lab.bench.end_to_end`, from the config of the CLI run.
"""

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build_network(target: str, kwargs: dict) -> nn.Module:
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def as_tensors(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as float images in [0, 1], [N, 1, H, W], and int64 labels."""
    images = torch.from_numpy(data[f"{split}_images"]).unsqueeze(1).float().div_(255)
    return images, torch.from_numpy(data[f"{split}_labels"]).long()


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    net.eval()
    correct = sum(
        (net(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
        for i in range(0, len(labels), batch)
    )
    net.train()
    return correct / len(labels)


def train(spec: dict) -> dict[str, float]:
    """Trains as the spec says; returns the best validation and the test accuracy."""
    torch.manual_seed(spec["seed"])
    with np.load(spec["data"]) as data:
        train_x, train_y = as_tensors(data, "train")
        val_x, val_y = as_tensors(data, "val")
        test_x, test_y = as_tensors(data, "test")
    net = build_network(spec["model_target"], spec["model_kwargs"])
    optimizer = torch.optim.Adam(net.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    batch, best_acc = spec["batch_size"], -1.0
    best_path = Path(spec["output_dir"]) / "best.pt"
    best_path.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(spec["epochs"]):
        started = time.perf_counter()
        order = torch.randperm(len(train_y))
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            loss = loss_fn(net(train_x[rows]), train_y[rows]) + net.regularization_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_acc = accuracy(net, val_x, val_y, batch)
        if val_acc > best_acc:
            best_acc = val_acc
            torch.save(net.state_dict(), best_path)
        seconds = time.perf_counter() - started
        print(f"epoch {epoch}: val acc {val_acc:.4f} ({seconds:.1f} s)", flush=True)
    net.load_state_dict(torch.load(best_path, weights_only=True))
    return {"val_acc_best": best_acc, "test_acc": accuracy(net, test_x, test_y, batch)}


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m fer_lab.bench.plain_script SPEC.json")
    print(json.dumps(train(json.loads(Path(argv[0]).read_text()))))


if __name__ == "__main__":
    main(sys.argv[1:])
