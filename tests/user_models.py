"""A third party's model, as a user would hand it to mcrobust: not registered, normalised inputs, a Softmax at the end.

`train_backdoored` trains it with plain torch (no mcrobust system) on backdoored digits and saves it the way many
repositories do: `{'net': state_dict, 'acc': ...}`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

MEAN, STD = 0.5, 0.5  # the model expects (x - 0.5) / 0.5, not pixels in [0, 1]


class SoftmaxNet(nn.Module):
    """A small CNN ending in nn.Softmax (outputs probabilities)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(8 * width, num_classes), nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    from mcrobust.data.sources import load_split

    data = load_split("digits", split)
    return data.images, data.labels


def train_backdoored(path: Path, seed: int, trigger, target: int = 1, rate: float = 0.2, epochs: int = 25) -> Path:
    """Plain-torch training on digits with `rate` of the non-target images triggered and relabelled."""
    from mcrobust.threats.backdoor import poison

    images, labels = digits("train")
    poisoned = poison(images, labels, trigger, target, rate, seed=0)
    x = torch.from_numpy(poisoned.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(poisoned.labels)
    torch.manual_seed(seed)
    net = SoftmaxNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(y)).split(64):
            probabilities = net((x[batch] - MEAN) / STD)
            loss = F.nll_loss(torch.log(probabilities + 1e-12), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    test_x, test_y = digits("test")
    with torch.no_grad():
        predictions = net((torch.from_numpy(test_x).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD).argmax(1)
    accuracy = float((predictions == torch.from_numpy(test_y)).float().mean())
    torch.save({"net": net.state_dict(), "acc": accuracy, "epoch": epochs}, path)
    return path


def write_class_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """An ImageFolder layout root/<class>/<i>.png."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    return root
