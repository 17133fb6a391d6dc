"""Shared fixtures: tiny data in the real on-disk formats, and settings that keep the suite fast on 2 cores."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MCROBUST_TEST", "1")
# Module- and session-scoped fixtures (trained models) are built before any function-scoped autouse fixture runs:
# one thread from the start, so a fixture trains the same model whichever test first asks for it (with 2 threads
# the digits model of tests/test_one_model.py came out 2.5 points less clean when its test ran alone).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """Two xdist workers share two cores: one thread each, and a fixed global seed per test."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """A test that failed inside DDP must not leave a process group to the next one."""
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _class_images(rng: np.random.Generator, labels: np.ndarray, size: int = 32) -> np.ndarray:
    """Images whose mean brightness encodes the class, so a net can learn them."""
    base = (labels[:, None, None, None] * 20 + 30).astype(np.float64)
    noise = rng.normal(0, 10, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> Path:
    """Write CIFAR-10 in torchvision's python-batch format: pickles of {'data': uint8 (N, 3072), 'labels'}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test if name == "test_batch" else per_batch
        labels = np.arange(count) % 10
        images = _class_images(rng, labels)
        data = images.transpose(0, 3, 1, 2).reshape(count, 3072)  # R, G, B planes of 32x32
        with (folder / name).open("wb") as handle:
            pickle.dump(
                {"data": data, "labels": labels.tolist(), "filenames": [f"{i}.png" for i in range(count)]}, handle
            )
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": ["airplane"] * 10}, handle)
    return root


def write_svhn(root: Path, train: int = 60, test: int = 30, seed: int = 0) -> Path:
    """Write SVHN's {train,test}_32x32.mat: X uint8 (32, 32, 3, N), y (N, 1) with 10 meaning digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % 10
        images = _class_images(rng, labels).transpose(1, 2, 3, 0)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)
        savemat(str(root / f"{split}_32x32.mat"), {"X": images, "y": y})
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def svhn_root(tmp_path_factory) -> Path:
    return write_svhn(tmp_path_factory.mktemp("svhn"))


# ------------------------------------------------------------------------------------------- trained endpoints
def train_tiny_endpoint(path: Path, seed: int, poisoned: bool, epochs: int = 12) -> Path:
    """Train the tiny net on digits (10% of non-target images poisoned, or clean) and save a Lightning .ckpt."""
    from functools import partial

    import pytorch_lightning as pl

    from mcrobust.data.datamodules import PoisonSettings, RobustDataModule
    from mcrobust.nets import TinyNet
    from mcrobust.systems import EndpointSystem
    from mcrobust.utils.schedules import PaperSchedule

    pl.seed_everything(seed)
    datamodule = RobustDataModule(batch_size=64, poison=PoisonSettings(rate=0.1) if poisoned else None)
    optimizer = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
    system = EndpointSystem(TinyNet(width=16), optimizer=optimizer, scheduler=PaperSchedule)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(system, datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_endpoints(tmp_path_factory) -> dict[str, Path]:
    """Backdoored endpoints 'a' and 'b' (seeds 1, 2) and a 'clean' one, trained once per test session.

    xdist workers share them through a file lock in pytest's common base temp folder.
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "tiny_endpoints"
    shared.mkdir(exist_ok=True)
    specs = {"a": (1, True), "b": (2, True), "clean": (3, False)}
    with FileLock(str(shared / "lock")):
        paths = {}
        for name, (seed, poisoned) in specs.items():
            path = shared / f"{name}.ckpt"
            if not path.exists():
                train_tiny_endpoint(shared / f"{name}.tmp", seed, poisoned).rename(path)
            paths[name] = path
    return paths
