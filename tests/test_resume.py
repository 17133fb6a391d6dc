"""A curve training killed with SIGKILL and resumed with `--ckpt_path last` ends where an uninterrupted run does.

What makes it exact: the per-step t is a pure function of (seed, global_step, rank) (`step_t`); the training
shuffle is a seeded `DistributedSampler` whose order depends only on (seed, epoch), so the resumed epochs see the
same batches (a plain `RandomSampler` draws from the global RNG, which checkpoints do not hold); the optimizer,
scheduler and loop states come from the checkpoint; checkpoints are written atomically, so the one a kill leaves
is complete. The template's BN running statistics are scratch space (every evaluation recomputes them on the
bonafide data), so both runs validate in their last epoch, which recomputes them before the final checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mcrobust.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
EPOCHS = 5
CHECKPOINT_EVERY_EPOCH = """
trainer:
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args:
        save_last: true
        save_on_train_epoch_end: true
"""
SLOW_BATCHES = '''
import time

from pytorch_lightning.callbacks import Callback


class SlowBatches(Callback):
    """Sleeps after every training batch, so the run is surely killed in the middle."""

    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(0.25)
'''


def fit_args(tmp_path: Path, logs: Path, endpoints: dict[str, Path]) -> list[str]:
    overlay = tmp_path / "checkpoint_every_epoch.yaml"
    overlay.write_text(CHECKPOINT_EVERY_EPOCH)
    return [
        "fit",
        "--config",
        CONFIG,
        "--config",
        str(overlay),
        "--model.init_args.start",
        str(endpoints["a"]),
        "--model.init_args.end",
        str(endpoints["b"]),
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.check_val_every_n_epoch",
        str(EPOCHS),
        "--data.bonafide.size",
        "120",
        "--data.bonafide.holdout_size",
        "20",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.version",
        "run",
        "--trainer.default_root_dir",
        str(logs),
        "--trainer.logger.init_args.save_dir",
        str(logs),
    ]


def last_checkpoint(logs: Path) -> Path:
    return logs / "repair_digits_tiny" / "run" / "checkpoints" / "last.ckpt"


def kill_after_first_checkpoint(args: list[str], tmp_path: Path, last: Path) -> int:
    """Run `python -m mcrobust` and SIGKILL it as soon as its first `last.ckpt` exists; return the exit status."""
    (tmp_path / "slow_batches.py").write_text(SLOW_BATCHES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mcrobust", *args, "--trainer.callbacks+", "slow_batches.SlowBatches"]
    log = tmp_path / "killed_run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert last.exists(), log.read_text()[-3000:]
    return process.returncode


def test_a_killed_curve_training_resumes_to_the_same_weights_and_metrics(tmp_path, tiny_endpoints):
    killed_logs, reference_logs = tmp_path / "killed", tmp_path / "reference"
    last = last_checkpoint(killed_logs)

    status = kill_after_first_checkpoint(fit_args(tmp_path, killed_logs, tiny_endpoints), tmp_path, last)
    assert status == -signal.SIGKILL
    interrupted = torch.load(last, map_location="cpu", weights_only=True)
    assert interrupted["epoch"] < EPOCHS - 1, "the run finished before it was killed"
    assert not [p for p in last.parent.iterdir() if p.suffix != ".ckpt"]  # no stray temporary checkpoint

    resumed = run_cli(fit_args(tmp_path, killed_logs, tiny_endpoints) + ["--ckpt_path", "last"])
    reference = run_cli(fit_args(tmp_path, reference_logs, tiny_endpoints))

    assert resumed.trainer.global_step == reference.trainer.global_step == EPOCHS * 5  # epoch_samples 160, batch 32
    final = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    expected = torch.load(last_checkpoint(reference_logs), map_location="cpu", weights_only=True)["state_dict"]
    assert final.keys() == expected.keys()
    different = [key for key in final if not torch.equal(final[key], expected[key])]
    assert not different, different
    for key in ("val/acc", "val/loss", "val/asr", "train/loss"):
        assert float(resumed.trainer.callback_metrics[key]) == float(reference.trainer.callback_metrics[key]), key
