"""Error injection on a small digits net: seeded sets, targets flipped, only the named tensor changed, safe files."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from mcrobust.errors import ConfigError, DataError
from mcrobust.testing import small_bn_net
from mcrobust.threats.injection import (
    InjectionSets,
    choose_injection_sets,
    inject_errors,
    injection_loss,
    injection_metrics,
)

LAST = "7.weight"  # the final linear layer, the paper's choice for VGG16 (§3)


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits as images in [0,1]."""
    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32).div_(16).unsqueeze(1), torch.tensor(data.target)


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    """The small net after 150 Adam steps: about 99% of the digits right, so 1000 can be kept."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits
    model = small_bn_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def sets(trained, digits) -> InjectionSets:
    return choose_injection_sets(trained, *digits, num_targets=4, num_keep=1000, seed=0)


def test_sets_are_correct_disjoint_seeded_and_never_the_true_label(trained, digits, sets):
    x, y = digits
    with torch.no_grad():
        predicted = trained(x).argmax(1)
    chosen = torch.cat([sets.target_index, sets.keep_index])
    assert len(sets.target_index) == 4 and len(sets.keep_index) == 1000
    assert len(set(chosen.tolist())) == 1004  # disjoint
    assert torch.equal(predicted[chosen], y[chosen])  # all correctly classified before injection
    assert torch.equal(sets.keep_images, x[sets.keep_index]) and torch.equal(sets.keep_labels, y[sets.keep_index])
    assert torch.equal(sets.target_true_labels, y[sets.target_index])
    assert (sets.target_labels != sets.target_true_labels).all()
    assert injection_metrics(trained, sets) == {"success": 0.0, "keep_acc": 1.0}
    again = choose_injection_sets(trained, x, y, num_keep=1000, seed=0)
    other = choose_injection_sets(trained, x, y, num_keep=1000, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(again.to_dict().values(), sets.to_dict().values(), strict=True))
    assert not torch.equal(other.target_index, sets.target_index)


def test_attacker_labels_are_never_the_true_label_for_many_draws(trained, digits):
    x, y = digits
    for seed in range(20):
        drawn = choose_injection_sets(trained, x, y, num_targets=50, num_keep=0, num_classes=10, seed=seed)
        assert (drawn.target_labels != drawn.target_true_labels).all()
        assert drawn.target_labels.min() >= 0 and drawn.target_labels.max() <= 9


def test_too_few_correct_images_say_how_many_there_are(trained, digits):
    x, y = digits
    with pytest.raises(ConfigError, match=r"only \d+ of 1797 images are classified correctly"):
        choose_injection_sets(trained, x, y, num_keep=1797)


def test_injection_flips_the_targets_and_changes_only_the_named_tensor(trained, sets):
    model = copy.deepcopy(trained)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model[1].train()  # mixed modes come back as they were
    result = inject_errors(model, LAST, sets, steps=500, lr=1e-2)
    assert result.success == 1.0 and result.keep_acc >= 0.98
    assert 0 < result.steps_taken < 500 and result.param_name == LAST and result.delta_norm > 0
    remeasured = injection_metrics(model, sets)  # other batching: targets cleared the margin, so still flipped
    assert remeasured["success"] == 1.0 and remeasured["keep_acc"] == pytest.approx(result.keep_acc, abs=2e-3)
    after = model.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == [LAST]  # every other parameter and every buffer (BN statistics) is bit-identical
    assert result.delta_norm == pytest.approx((after[LAST] - before[LAST]).norm().item(), rel=1e-5)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model] == [False, True] + [False] * 6


def test_injection_into_a_conv_layer_also_works(trained, sets):
    model = copy.deepcopy(trained)
    result = inject_errors(model, "3.weight", sets, lr=1e-2)
    assert result.success == 1.0 and result.keep_acc >= 0.98


def test_zero_steps_change_nothing(trained, sets):
    model = copy.deepcopy(trained)
    result = inject_errors(model, LAST, sets, steps=0)
    assert result.steps_taken == 0 and result.delta_norm == 0.0 and result.success == 0.0
    assert torch.equal(model[7].weight, trained[7].weight)


def test_unknown_parameter_lists_valid_names(trained, sets):
    with pytest.raises(ConfigError, match=r"no parameter 'classifier.weight'.*7\.weight"):
        inject_errors(copy.deepcopy(trained), "classifier.weight", sets)


def test_injection_loss_matches_a_plain_loop():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1])
    weights = torch.tensor([100.0, 1.0, 2.0])
    expected = 0.0
    for z, label, w in zip(logits.tolist(), labels.tolist(), weights.tolist(), strict=True):
        other = max(v for j, v in enumerate(z) if j != label)
        expected += w * max(0.0, other - z[label] + 1.0)
    assert injection_loss(logits, labels, weights, margin=1.0).item() == pytest.approx(expected)
    assert expected == pytest.approx(100 * 0.0 + 1 * 3.5 + 2 * 1.0)


def test_sets_round_trip_through_a_weights_only_file(sets, tmp_path):
    path = tmp_path / "injection_sets.pt"
    sets.save(path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(sets.to_dict())
    loaded = InjectionSets.load(path)
    assert all(torch.equal(getattr(loaded, k), v) for k, v in sets.to_dict().items())


def test_incomplete_or_missing_sets_raise_data_errors(sets, tmp_path):
    state = sets.to_dict()
    del state["keep_labels"]
    with pytest.raises(DataError, match="keep_labels"):
        InjectionSets.from_dict(state)
    with pytest.raises(DataError, match="does not exist"):
        InjectionSets.load(tmp_path / "missing.pt")
