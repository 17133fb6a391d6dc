"""The benchmark tooling: previous values from docs/results.md, lower-bound goals, the JPEG zip reader, the
data-pipeline benchmark's same-batches check, and the GPU suite's `--smoke` run on the CPU."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data_pipeline import check_same_order, fake_cifar, training_loaders  # noqa: E402
from cifar_jpeg import read_split  # noqa: E402
from common import Row, table  # noqa: E402
from run_all import DEMO_KEY, previous_values  # noqa: E402

RESULTS = """
## Benchmarks (`make bench`, 2026-11-20)

| bench | name | sizes | repeats | median ours | median reference | ratio/value | cpu ratio | goal | met? |
|---|---|---|---|---|---|---|---|---|---|
| pgd | tiny PGD ours / torchattacks | batch 128 | 9 | 1 s | 1 s | 1.100x | 1.1x | <= 1 | NO |
| pgd | tiny robust acc. \\|ours - torchattacks\\|, random start | b | - | - | - | 0.0156 | - | - | - |

- **`make demo`** (goal <= 3 min after set-up): 89 s.

## Benchmarks, 2026-11-25

| bench | name | sizes | repeats | median ours | median reference | ratio/value | cpu ratio | goal | met? |
|---|---|---|---|---|---|---|---|---|---|
| pgd | tiny PGD ours / torchattacks | batch 128 | 9 | 1 s | 1 s | 0.998x | 1.0x | <= 1 | yes |

## `make demo`: backdoor repair on digits (2026-11-30)

Final run of `make demo`: 70 s wall time (not a benchmark section).
"""


def test_previous_values_come_from_the_latest_dated_section_that_has_the_row():
    values = previous_values(RESULTS)
    assert values["pgd / tiny PGD ours / torchattacks"] == "0.998x"
    assert values["pgd / tiny robust acc. |ours - torchattacks|, random start"] == "0.0156"
    assert values[DEMO_KEY] == "89.0 s"  # only benchmark sections count for the demo line


def test_a_lower_bound_goal_is_met_from_above_and_printed_with_its_direction():
    speedup = Row("b", "speed-up", "-", 6.0, goal=5.0, lower_bound=True)
    fraction = Row("b", "fraction", "-", 0.06, goal=0.05, unit="")
    assert speedup.met is True and fraction.met is False
    assert not Row("b", "slow", "-", 4.0, goal=5.0, lower_bound=True).met
    text = table([speedup, fraction], markdown=True, previous={"b / speed-up": "2.0x"})
    assert ">= 5" in text and "<= 0.05" in text and "2.0x" in text


def write_zip(path: Path, split: str, per_class: int, seed: int = 0) -> np.ndarray:
    """A zip in the layout of ../shared/data/cifar10-jpeg (`<split>/<class>/NNNN.jpg`); returns the pixel means."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    means = []
    with zipfile.ZipFile(path, "w") as archive:
        for label, name in enumerate(["airplane", "automobile", "bird"]):
            for i in range(per_class):
                pixels = np.full((32, 32, 3), 40 * label + 10 + i, dtype=np.uint8)
                pixels += rng.integers(0, 3, pixels.shape, dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
                archive.writestr(f"{split}/{name}/{i:04d}.jpg", buffer.getvalue())
                means.append(pixels.mean())
    return np.asarray(means)


def test_the_zip_reader_keeps_class_order_and_the_first_images_per_class(tmp_path):
    means = write_zip(tmp_path / "train.zip", "train", per_class=4)
    split = read_split(tmp_path, "train", per_class=3, threads=2)
    assert split.images.shape == (9, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert split.classes == ("airplane", "automobile", "bird")
    kept = means.reshape(3, 4)[:, :3].reshape(-1)
    np.testing.assert_allclose(split.images.reshape(9, -1).mean(1), kept, atol=1.5)  # JPEG: close, not equal


def test_the_pipeline_benchmark_compares_the_same_batches():
    images, labels = fake_cifar(300)
    loaders = training_loaders(images, labels)
    assert check_same_order(loaders) == 3
    x, y, _ = next(iter(loaders["batched"]))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long


@pytest.mark.slow  # 20-40 s on the 2 shared cores: Lightning's import, a short fit and a whole (tiny) repair
def test_the_gpu_suite_smoke_run_measures_every_section_on_the_cpu(tmp_path):
    write_zip(tmp_path / "train.zip", "train", per_class=12)
    write_zip(tmp_path / "test.zip", "test", per_class=40, seed=1)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [str(ROOT / "benchmarks/gpu_suite.sh"), str(out), str(tmp_path), "--smoke"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert {name: info["status"] for name, info in report["sections"].items()} == dict.fromkeys(
        ["pipeline", "epoch", "curve_step", "hessian", "pgd", "chain"], "ok"
    )
    assert report["device"]["device"] == "cpu" and "JPEGs" in report["data"]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["data pipeline epoch, speed-up loader / batched"]["value"] > 1
    assert rows["Lightning fit, data.pipeline batched: training batches made on the training device"]["met"]
    assert (
        0 <= rows["repaired point: ASR"]["value"] <= 1
        and rows["repair chain wall time (2 endpoints + mcrobust.repair)"]["value"] > 0
    )
    assert "| gpu_suite |" in (out / "gpu_suite.md").read_text()
