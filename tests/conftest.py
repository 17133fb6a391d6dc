"""Shared fixtures: tiny data and nets that keep the whole suite fast on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MCROBUST_TEST", "1")


@pytest.fixture(autouse=True)
def _few_threads_and_seed():
    """Two xdist workers share two cores: one thread each, and a fixed global seed per test."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
