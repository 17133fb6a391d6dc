"""device_of (where a module's inputs go) and require (the one-line argument check)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.utils.checks import require
from mcrobust.utils.modes import device_of


@pytest.mark.parametrize(
    "module",
    [
        nn.Linear(2, 3, device="meta"),
        nn.BatchNorm1d(4, affine=False).to("meta"),
        nn.Sequential(nn.ReLU(), nn.Linear(2, 2, device="meta")),
    ],
    ids=["parameters", "buffers-only", "nested"],
)
def test_device_of_is_where_the_first_parameter_or_buffer_lives(module):
    assert device_of(module) == torch.device("meta")  # not the CPU default: the module's own tensors decide


def test_device_of_a_module_without_tensors_is_the_cpu():
    assert device_of(nn.ReLU()) == torch.device("cpu")


def test_require_passes_or_raises_one_config_error_line():
    require(True, "never raised")
    with pytest.raises(ConfigError) as error:
        require(1 > 2, "steps must be >= 0, got -1")
    assert str(error.value) == "steps must be >= 0, got -1"
