"""In-memory tensor data sets and augmentation that keeps pixels in [0,1]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

Transform = Callable[[torch.Tensor], torch.Tensor]


class CropFlip:
    """Random crop of `size` from the image padded with `padding` zero pixels, then a horizontal flip (p = 1/2).

    The per-sample form (torchvision v2, one image at a time, global RNG) of an augmentation whose parameters the
    batched pipeline (`mcrobust.data.batched`) reads to apply it to a whole batch in one op.

    Args:
        size: output (height, width); an int means a square.
        padding: zero pixels added on every side before cropping.
    """

    def __init__(self, size: int | tuple[int, int] = 32, padding: int = 4) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.padding = padding
        self._ops = v2.Compose([v2.RandomCrop(self.size, padding=padding), v2.RandomHorizontalFlip()])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._ops(x)

    def __repr__(self) -> str:
        return f"CropFlip(size={self.size}, padding={self.padding})"


def cifar_augmentation(image_size: int | tuple[int, int] = 32) -> CropFlip:
    """Random crop with 4 pixels of zero padding and a horizontal flip, the standard CIFAR recipe."""
    return CropFlip(image_size, padding=4)


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, C) as float (C, H, W) tensors in [0,1], with labels and dataset indices.

    Items are `(x, y, index)`: the index seeds per-sample evaluation randomness (PGD starts, power-iteration
    vectors), so results do not depend on batch size or DDP sharding.

    Args:
        images: uint8 array (N, H, W, C).
        labels: int64 array (N,).
        transform: augmentation applied to each float image.
        late_trigger: a callable applied after `transform` to the images listed in `late_trigger_index`
            (a backdoor trigger applied after augmentation); it must also take a batch (N, C, H, W), as every
            trigger's `apply_tensor` does, since the batched pipeline stamps whole batches.
        late_trigger_index: positions that receive `late_trigger`.
        indices: the dataset index reported for each item (defaults to 0..N-1).
        true_labels: for a triggered set, each image's true class: items become `(x, y, index, true_label)`, so
            one pass gives both the attack success rate (y = target) and the robust accuracy `ra` (true labels).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Transform | None = None,
        late_trigger: Transform | None = None,
        late_trigger_index: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        true_labels: np.ndarray | None = None,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N,C,H,W uint8 view
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.late_trigger = late_trigger
        self.late = np.zeros(len(labels), dtype=bool)
        if late_trigger_index is not None:
            self.late[late_trigger_index] = True
        self.indices = torch.as_tensor(np.arange(len(labels)) if indices is None else indices, dtype=torch.long)
        self.true_labels = None if true_labels is None else torch.as_tensor(true_labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        x = self.images[item].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        if self.late_trigger is not None and self.late[item]:
            x = self.late_trigger(x)
        if self.true_labels is not None:
            return x, self.labels[item], self.indices[item], self.true_labels[item]
        return x, self.labels[item], self.indices[item]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All items at once, without augmentation: (images float N,C,H,W, labels, indices)."""
        return self.images.float().div(255.0), self.labels, self.indices
