"""ChainSettings: the path's distillation weight ('auto': 4 with two models, 0 with one), checked in one line and
part of what a resume must share."""

from __future__ import annotations

import pytest

from mcrobust.errors import ConfigError
from mcrobust.pipeline.settings import BEFORE_IT_EXISTED, TWO_MODEL_DISTILL, ChainSettings


@pytest.mark.parametrize("weight", [-0.5, float("inf"), float("nan"), "strong", True])
def test_an_impossible_distillation_weight_is_a_one_line_error(weight):
    with pytest.raises(ConfigError, match=r"^path_distill must be >= 0 \(0: off\) or 'auto', got"):
        ChainSettings(path_distill=weight)


def test_auto_distils_a_path_between_two_models_and_keeps_the_papers_objective_with_one():
    one, two, fixed = ChainSettings(), ChainSettings(), ChainSettings(path_distill=1.0)
    one.resolve_for(one_model=True)
    two.resolve_for(one_model=False)
    fixed.resolve_for(one_model=False)
    assert (one.path_distill, two.path_distill, fixed.path_distill) == (0.0, TWO_MODEL_DISTILL, 1.0)


def test_the_distillation_weight_shapes_the_trained_path_so_a_resume_must_share_it():
    assert ChainSettings(path_distill=1.0).training_settings()["path_distill"] == 1.0
    assert BEFORE_IT_EXISTED["path_distill"] == 0.0  # folders from before the setting trained the paper's objective
