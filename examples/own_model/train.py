"""Step 1: train MyCNN with your own loop and save its weights (a plain state_dict).

python train.py            # writes my_cnn.pt
"""

from __future__ import annotations

import argparse

import torch
from mycnn import build_data, build_model
from torch.nn import functional as F


def main(epochs: int = 4, num_samples: int = 2000, out: str = "my_cnn.pt") -> float:
    torch.manual_seed(0)
    data = build_data(num_samples)
    model = build_model(in_channels=1, num_classes=data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data.train))
        for start in range(0, len(order), 64):
            x, y = data.train[order[start : start + 64]]
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    torch.save(model.state_dict(), out)
    print(f"test accuracy {accuracy:.3f}; weights in {out}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=2000)
    args = parser.parse_args()
    main(args.epochs, args.num_samples)
