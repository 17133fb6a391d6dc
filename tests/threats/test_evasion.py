"""PGD and AutoAttack on a small digits net: ball and box, real accuracy drops, per-sample seeding, torchattacks."""

from __future__ import annotations

import sys

import pytest
import torch
import torchattacks
from scipy import stats
from sklearn.datasets import load_digits
from torch import Tensor, nn

from mcrobust.errors import ConfigError
from mcrobust.testing import small_bn_net
from mcrobust.threats.evasion import PGD, Attack, AutoAttack, robust_metrics
from mcrobust.utils.seeding import per_sample_normal, per_sample_uniform

EPS = {"linf": 0.1, "l2": 1.0}  # 8x8 digits in [0,1]: an L2 ball of 1.0 is about 0.125 per pixel


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits as images in [0,1]: 1200 to train on, 597 held out."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).div_(16).unsqueeze(1)
    y = torch.tensor(data.target)
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.fixture(scope="module")
def net(digits) -> nn.Module:
    """The small net trained for 150 Adam steps (about a second on one thread)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits[0], digits[1]
    model = small_bn_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def flat_norms(delta: Tensor, norm: str) -> Tensor:
    return delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box(net, digits, norm):
    x, y = digits[2][:200], digits[3][:200]
    x_adv = PGD(eps=EPS[norm], alpha=EPS[norm] / 4, steps=10, norm=norm)(net, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert flat_norms(x_adv - x, norm).max() <= EPS[norm] + 1e-6
    assert flat_norms(x_adv - x, norm).mean() > 0.5 * EPS[norm]  # it really moved


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_lowers_accuracy_of_a_trained_net(net, digits, norm):
    x, y = digits[2], digits[3]
    clean = accuracy(net, x, y)
    robust = accuracy(net, PGD(eps=EPS[norm], alpha=EPS[norm] / 4, steps=10, norm=norm)(net, x, y), y)
    assert clean >= 0.93
    assert robust <= clean - 0.3


def test_pgd_is_reproducible_per_seed(net, digits):
    x, y = digits[2][:64], digits[3][:64]
    first, again = PGD(eps=0.1, seed=3)(net, x, y), PGD(eps=0.1, seed=3)(net, x, y)
    other = PGD(eps=0.1, seed=4)(net, x, y)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_does_not_depend_on_batching(net, digits, norm):
    """Batches of 7 and of 64, and a shuffled order (another DDP shard), give the same images for the same index.

    The starts are bit-identical; after the steps only the float rounding of the net's batched kernels differs.
    """
    x, y = digits[2][:64], digits[3][:64]
    index = torch.arange(1000, 1064)
    order = torch.randperm(64)
    for steps in (0, 5):
        attack = PGD(eps=EPS[norm], alpha=EPS[norm] / 4, steps=steps, norm=norm, seed=1)
        whole = attack(net, x, y, index)
        in_sevens = torch.cat(
            [attack(net, *batch) for batch in zip(x.split(7), y.split(7), index.split(7), strict=True)]
        )
        shuffled = torch.empty_like(whole)
        shuffled[order] = attack(net, x[order], y[order], index[order])
        if steps == 0:
            assert torch.equal(whole, in_sevens) and torch.equal(whole, shuffled)
        assert torch.allclose(whole, in_sevens, atol=1e-5) and torch.allclose(whole, shuffled, atol=1e-5)


def test_random_start_is_uniform_in_the_ball():
    """With steps=0 the result is the start: uniform in the L-inf cube, and uniform in the L2 ball (radius^d ~ U)."""
    x, y, model = torch.full((400, 1, 4, 4), 0.5), torch.zeros(400, dtype=torch.long), nn.Flatten()
    linf = PGD(eps=0.2, steps=0)(model, x, y) - x
    assert stats.kstest(((linf.flatten() + 0.2) / 0.4).numpy(), "uniform").pvalue > 1e-3
    l2 = PGD(eps=0.3, steps=0, norm="l2")(model, x, y) - x
    radius = l2.flatten(1).norm(dim=1) / 0.3
    assert radius.max() <= 1 + 1e-5
    assert stats.kstest((radius.clamp(max=1) ** 16).numpy(), "uniform").pvalue > 1e-3
    assert l2.flatten(1).mean(0).abs().max() < 0.05  # no preferred direction


def test_per_sample_numbers_depend_only_on_seed_index_and_position():
    index = torch.tensor([5, 9, 2**31 + 7, 0])
    numbers = per_sample_uniform(0, index, (3, 5))
    assert numbers.shape == (4, 3, 5) and numbers.min() >= 0 and numbers.max() < 1
    assert torch.equal(per_sample_uniform(0, index[1:3].int(), (3, 5)), numbers[1:3])
    assert not torch.equal(per_sample_uniform(1, index, (3, 5)), numbers)
    assert not torch.equal(per_sample_uniform(0, index, (3, 5), stream=1), numbers)
    many = per_sample_uniform(7, torch.arange(2000), (50,))
    assert stats.kstest(many.flatten().numpy(), "uniform").pvalue > 1e-3
    normal = per_sample_normal(7, torch.arange(2000), (50,)).flatten()
    assert stats.kstest(normal.numpy(), "norm").pvalue > 1e-3
    assert abs(torch.corrcoef(torch.stack([many[:-1].flatten(), many[1:].flatten()]))[0, 1]) < 0.01


@pytest.mark.parametrize(
    "norm, reference",
    [pytest.param("linf", torchattacks.PGD, id="linf"), pytest.param("l2", torchattacks.PGDL2, id="l2")],
)
def test_pgd_agrees_with_torchattacks_without_random_start(net, digits, norm, reference):
    x, y = digits[2], digits[3]
    eps, alpha = EPS[norm], EPS[norm] / 4
    ours = PGD(eps=eps, alpha=alpha, steps=10, norm=norm, random_start=False)(net, x, y)
    theirs = reference(net, eps=eps, alpha=alpha, steps=10, random_start=False)(x, y)
    assert accuracy(net, ours, y) == accuracy(net, theirs, y)
    if norm == "linf":
        assert torch.allclose(ours, theirs, atol=1e-6)
    else:  # torchattacks adds 1e-10 to the norm of a batch-mean gradient: only samples with real gradients match
        x_grad = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(net(x_grad), y, reduction="sum"), x_grad)
        real = grad.flatten(1).norm(dim=1) > 1e-2  # at ~1e-3 the 1e-10 shifts the step of one sample by 2e-4
        assert real.sum() > 100
        assert torch.allclose(ours[real], theirs[real], atol=1e-4)


def test_pgd_agrees_with_torchattacks_with_random_start(net, digits):
    x, y = digits[2], digits[3]
    ours = accuracy(net, PGD(eps=0.1, alpha=0.025, steps=10)(net, x, y), y)
    theirs = accuracy(net, torchattacks.PGD(net, eps=0.1, alpha=0.025, steps=10, random_start=True)(x, y), y)
    assert abs(ours - theirs) <= 0.03


def test_targeted_pgd_reaches_targets(net, digits):
    x, y = digits[2][:200], digits[3][:200]
    targets = (y + 1) % 10
    x_adv = PGD(eps=0.3, alpha=0.05, steps=20, targeted=True)(net, x, targets)
    with torch.no_grad():
        assert (net(x_adv).argmax(1) == targets).float().mean() >= 0.9


def test_pgd_leaves_modes_buffers_and_grads_alone(net, digits):
    x, y = digits[2][:32], digits[3][:32]
    net.train()
    net[1].eval()  # a frozen BN inside a training model must stay frozen
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        PGD(eps=0.1)(net, x, y)
        modes = [m.training for m in net]
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # BN ran in eval mode
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in net.parameters())
    finally:
        net.eval()
        for p in net.parameters():
            p.grad = None
    assert modes == [True, False] + [True] * 6


def test_pgd_works_inside_no_grad_and_inference_mode(net, digits):
    x, y = digits[2][:32], digits[3][:32]
    expected = PGD(eps=0.1)(net, x, y)
    with torch.no_grad():
        assert torch.equal(PGD(eps=0.1)(net, x, y), expected)
    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()
        assert torch.equal(PGD(eps=0.1)(net, x_inf, y_inf), expected)


def test_robust_metrics_returns_logits_of_the_adversarial_images(net, digits):
    x, y = digits[2][:32], digits[3][:32]
    attack = PGD(eps=0.1)
    x_adv, logits = robust_metrics(net, attack, x, y)
    assert isinstance(attack, Attack)
    assert torch.equal(x_adv, attack(net, x, y))
    with torch.no_grad():
        assert torch.allclose(logits, net(x_adv))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"eps": -0.1}, id="negative-eps"),
        pytest.param({"alpha": -1.0}, id="negative-alpha"),
        pytest.param({"steps": -1}, id="negative-steps"),
        pytest.param({"steps": 2.5}, id="fractional-steps"),
        pytest.param({"norm": "l3"}, id="unknown-norm"),
    ],
)
def test_bad_pgd_arguments_raise_one_line_config_errors(kwargs):
    with pytest.raises(ConfigError) as error:
        PGD(**kwargs)
    assert "\n" not in str(error.value) and next(iter(kwargs)) in str(error.value)


def test_pgd_with_zero_eps_returns_the_input(net, digits):
    x, y = digits[2][:16], digits[3][:16]
    assert torch.equal(PGD(eps=0.0)(net, x, y), x)


def test_autoattack_runs_and_keeps_the_global_rng(net, digits):
    x, y = digits[2][:8], digits[3][:8]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    x_adv = AutoAttack(eps=0.3, version="standard", seed=0)(net, x, y)
    assert torch.equal(torch.rand(3), expected_next)  # torchattacks reseeds globally: forked away
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(net, x_adv, y) <= accuracy(net, PGD(eps=0.3, alpha=0.05, steps=10)(net, x, y), y)


def test_autoattack_without_torchattacks_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ConfigError, match=r"pip install 'mcrobust\[autoattack\]'"):
        AutoAttack()


def test_bad_autoattack_version_raises():
    with pytest.raises(ConfigError, match="version"):
        AutoAttack(version="fast")
