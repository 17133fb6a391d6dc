"""ChainSettings: the path's distillation weight is checked in one line and is part of what a resume must share."""

from __future__ import annotations

import pytest

from mcrobust.errors import ConfigError
from mcrobust.pipeline.settings import ChainSettings


@pytest.mark.parametrize("weight", [-0.5, float("inf"), float("nan")])
def test_an_impossible_distillation_weight_is_a_one_line_error(weight):
    with pytest.raises(ConfigError, match=r"^path_distill must be >= 0 \(0: off\), got"):
        ChainSettings(path_distill=weight)


def test_the_distillation_weight_shapes_the_trained_path_so_a_resume_must_share_it():
    assert ChainSettings().training_settings()["path_distill"] == 0.0  # the paper's objective by default
    assert ChainSettings(path_distill=1.0).training_settings()["path_distill"] == 1.0
