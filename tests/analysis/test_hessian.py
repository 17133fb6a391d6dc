"""Per-sample input-Hessian eigenvalues against the exact Hessian of tiny nets (Zhao et al. 2020, §5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcrobust.analysis import hessian
from mcrobust.analysis.hessian import (
    input_hessian_power_iteration,
    input_hessian_top_eigenvalue,
    input_hessian_top_eigenvalues,
)
from mcrobust.errors import ConfigError

NUM_CLASSES = 5
TIGHT = {"iters": 1000, "tol": 1e-12}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, NUM_CLASSES))


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, NUM_CLASSES)
    )


def _conv_bn() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.ReLU(),
        nn.Linear(8, NUM_CLASSES),
    )
    with torch.no_grad():  # running statistics unlike a fresh BN's, so eval mode is not the identity
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


NETS = {"mlp": (_mlp, (1, 4, 4)), "conv": (_conv, (3, 4, 4)), "conv-bn": (_conv_bn, (1, 4, 4))}


def _net_and_data(name: str, n: int = 7, dtype: torch.dtype = torch.float64):
    make, shape = NETS[name]
    torch.manual_seed(1)
    net = make().to(dtype)
    x = torch.rand(n, *shape, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (n,))
    return net, x, y


def _exact_spectra(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eigenvalues [N, D] (descending) of each sample's exact input Hessian, net in eval mode, float64."""
    reference = copy.deepcopy(net).double().eval()
    spectra = []
    for xi, yi in zip(x.double(), y, strict=True):
        hessian = torch.func.hessian(lambda v, yi=yi: F.cross_entropy(reference(v[None]), yi[None]))(xi)
        spectra.append(torch.linalg.eigvalsh(hessian.reshape(xi.numel(), xi.numel())).flip(0))
    return torch.stack(spectra).detach()


@pytest.mark.parametrize("name", list(NETS))
def test_top_eigenvalue_matches_exact_hessian(name):
    net, x, y = _net_and_data(name)
    exact = _exact_spectra(net, x, y)
    assert (exact[:, 0] > 0).all() and (exact[:, -1] > -1e-12 * exact[:, 0]).all()  # PSD for ReLU nets
    result = input_hessian_top_eigenvalue(net, x, y, **TIGHT)
    torch.testing.assert_close(result, exact[:, 0], rtol=1e-6, atol=0)


def test_linear_model_matches_closed_form():
    """Softmax regression: H = W^T (diag(p) - p p^T) W, with no autograd in the reference."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, NUM_CLASSES)).double()
    x, y = torch.rand(4, 3, 2, 2, dtype=torch.float64), torch.randint(0, NUM_CLASSES, (4,))
    weight = net[1].weight.detach()
    probabilities = torch.softmax(net(x), dim=1).detach()
    exact = [torch.linalg.eigvalsh(weight.T @ (torch.diag(p) - torch.outer(p, p)) @ weight)[-1] for p in probabilities]
    torch.testing.assert_close(input_hessian_top_eigenvalue(net, x, y, **TIGHT), torch.stack(exact), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["mlp", "conv-bn"])
def test_top_k_matches_eigvalsh(name):
    net, x, y = _net_and_data(name)
    exact = _exact_spectra(net, x, y)
    result = input_hessian_top_eigenvalues(net, x, y, k=3, **TIGHT)
    assert result.shape == (7, 3)
    torch.testing.assert_close(result, exact[:, :3], rtol=1e-6, atol=1e-12)  # dead ReLUs can make the 3rd one 0


def test_rank_deficient_block_converges():
    """Rank <= classes - 1, so the 5th eigenvalue is 0 and still counts as converged (no run to the cap)."""
    net, x, y = _net_and_data("conv")
    result = input_hessian_power_iteration(net, x, y, k=NUM_CLASSES, iters=1000, tol=1e-9)
    exact = _exact_spectra(net, x, y)
    torch.testing.assert_close(result.values[:, :4], exact[:, :4], rtol=1e-6, atol=0)
    assert (result.values[:, 4].abs() < 1e-10 * result.values[:, 0]).all()
    assert (result.iterations < 1000).all()


def test_float32_is_accurate_to_tol():
    net, x, y = _net_and_data("conv", dtype=torch.float32)
    exact = _exact_spectra(net, x, y)[:, 0]
    result = input_hessian_top_eigenvalue(net, x, y, iters=300, tol=1e-6)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result.double(), exact, rtol=1e-3, atol=0)


@pytest.mark.parametrize("k", [1, 2], ids=["top1", "top2"])
def test_does_not_depend_on_batch_size(k):
    net, x, y = _net_and_data("conv-bn", n=7)
    whole = input_hessian_power_iteration(net, x, y, k=k)  # default tol 1e-3: early stops and rebuilds happen
    for size in (1, 3):
        parts = [
            input_hessian_power_iteration(
                net, x[i : i + size], y[i : i + size], k=k, index=torch.arange(7)[i : i + size]
            )
            for i in range(0, 7, size)
        ]
        torch.testing.assert_close(torch.cat([p.values for p in parts]), whole.values, rtol=1e-10, atol=0)
        assert torch.equal(torch.cat([p.iterations for p in parts]), whole.iterations)


def test_does_not_depend_on_batch_order():
    net, x, y = _net_and_data("mlp", n=9)
    whole = input_hessian_power_iteration(net, x, y, k=2)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    shuffled = input_hessian_power_iteration(net, x[order], y[order], k=2, index=order)
    torch.testing.assert_close(shuffled.values, whole.values[order], rtol=1e-10, atol=0)
    assert torch.equal(shuffled.iterations, whole.iterations[order])


def test_start_vector_follows_seed_and_index():
    """With one step the estimate is the Rayleigh quotient of the start vector, so it shows which vector was drawn."""
    net, x, y = _net_and_data("mlp", n=3)
    first = input_hessian_top_eigenvalue(net, x, y, iters=1)
    assert torch.equal(first, input_hessian_top_eigenvalue(net, x, y, iters=1, seed=0, index=torch.arange(3)))
    assert not torch.allclose(first, input_hessian_top_eigenvalue(net, x, y, iters=1, seed=1))
    assert not torch.allclose(first, input_hessian_top_eigenvalue(net, x, y, iters=1, index=torch.arange(3, 6)))


def test_batchnorm_net_state_is_untouched():
    net, x, y = _net_and_data("conv-bn")
    net.train()
    net[1].eval()  # a mixed mode must come back as it was
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    input_hessian_top_eigenvalue(net, x, y)
    assert net.training and not net[1].training and all(m.training for i, m in enumerate(net) if i != 1)
    assert all(p.grad is None for p in net.parameters())
    for name, buffer in net.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def test_works_without_grad_mode():
    net, x, y = _net_and_data("conv")
    expected = input_hessian_top_eigenvalue(net, x, y)
    with torch.no_grad():
        torch.testing.assert_close(input_hessian_top_eigenvalue(net, x, y), expected, rtol=0, atol=0)
    with torch.inference_mode():
        frozen_x = x.clone()  # an inference tensor, as a test loop under inference mode would hand over
        torch.testing.assert_close(input_hessian_top_eigenvalue(net, frozen_x, y), expected, rtol=0, atol=0)


def test_stops_early_per_sample():
    net, x, y = _net_and_data("conv-bn", n=16)
    loose = input_hessian_power_iteration(net, x, y, iters=50, tol=1e-2)
    assert (loose.iterations >= 2).all()  # the first step has nothing to compare with
    assert (loose.iterations < 50).any() and len(loose.iterations.unique()) > 1
    capped = input_hessian_power_iteration(net, x, y, iters=3, tol=1e-15)
    assert (capped.iterations == 3).all()
    torch.testing.assert_close(capped.values[:, 0], input_hessian_top_eigenvalue(net, x, y, iters=3, tol=1e-15))


def test_input_independent_model_has_zero_hessian():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = nn.Parameter(torch.randn(NUM_CLASSES))

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    result = input_hessian_power_iteration(Constant(), torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    assert torch.equal(result.values, torch.zeros(3, 1)) and torch.equal(result.iterations, torch.full((3,), 2))


def test_empty_batch():
    net, x, y = _net_and_data("mlp")
    assert input_hessian_top_eigenvalues(net, x[:0], y[:0], k=2).shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"iters": 0}, "iters must be >= 1", id="iters"),
        pytest.param({"tol": 0.0}, "tol must be > 0", id="tol-zero"),
        pytest.param({"tol": float("nan")}, "tol must be > 0", id="tol-nan"),
        pytest.param({"k": 0}, "k must be >= 1", id="k"),
        pytest.param({"k": 17}, "exceeds the 16 input values", id="k-too-large"),
        pytest.param({"index": torch.arange(3)}, "index must hold one integer per sample", id="index-size"),
        pytest.param({"index": torch.zeros(7)}, "index must hold one integer per sample", id="index-float"),
        pytest.param({"y": torch.zeros(6, dtype=torch.long)}, "need x", id="labels"),
    ],
)
def test_bad_arguments(kwargs, message):
    net, x, y = _net_and_data("mlp")
    arguments = {"x": x, "y": y, **kwargs}
    with pytest.raises(ConfigError, match=message):
        input_hessian_power_iteration(net, **arguments)


@pytest.mark.parametrize("fraction", [0.0, 1.0], ids=["never-rebuild", "always-rebuild"])
def test_graph_reuse_does_not_change_results(monkeypatch, fraction):
    """Zero vectors for finished samples in a reused graph and a rebuilt smaller graph give the same numbers."""
    net, x, y = _net_and_data("conv-bn", n=16)
    expected = input_hessian_power_iteration(net, x, y, k=2, tol=1e-2)
    monkeypatch.setattr(hessian, "_REBUILD_FRACTION", fraction)
    result = input_hessian_power_iteration(net, x, y, k=2, tol=1e-2)
    torch.testing.assert_close(result.values, expected.values, rtol=1e-10, atol=0)
    assert torch.equal(result.iterations, expected.iterations)
