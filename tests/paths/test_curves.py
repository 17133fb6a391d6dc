"""CurveModel on tiny nets: coefficients, endpoint equivalence, gradients only on free bends, tied weights."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from mcrobust.errors import CheckpointError, ConfigError
from mcrobust.paths.curves import CurveModel, bezier, polychain

CURVES = [pytest.param(kind, bends, id=f"{kind}-{bends}") for kind in ("bezier", "polychain") for bends in (3, 5)]
GRID = [i / 20 for i in range(21)]


class TinyNet(nn.Module):
    """Normalize buffer, conv, BN, pooling and a linear head: every kind of state a real net has."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x - self.mean))


class TiedNet(nn.Module):
    """Two linear layers sharing one weight matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4)
        self.decode = nn.Linear(4, 4)
        self.decode.weight = self.encode.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.tanh(self.encode(x)))


def trained_looking(seed: int, factory=TinyNet) -> nn.Module:
    """A net with its own weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    net = factory()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(seed + 10)
    return net.eval()


def make_curve(
    kind: str = "bezier", bends: int = 3, factory=TinyNet, **kwargs
) -> tuple[CurveModel, nn.Module, nn.Module]:
    start, end = trained_looking(1, factory), trained_looking(2, factory)
    curve = CurveModel(factory(), kind=kind, num_bends=bends, **kwargs)
    curve.set_endpoints(start.state_dict(), end.state_dict())
    return curve.eval(), start, end


@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_coefficients_are_nonnegative_and_sum_to_one(kind, bends):
    coefficients = {"bezier": bezier, "polychain": polychain}[kind]
    for t in GRID:
        values = coefficients(t, bends)
        assert values.shape == (bends,)
        assert bool((values >= 0).all())
        assert math.isclose(values.sum().item(), 1.0, rel_tol=1e-6)
    assert coefficients(torch.tensor(0.0), bends).tolist() == [1.0] + [0.0] * (bends - 1)
    assert coefficients(1.0, bends).tolist() == [0.0] * (bends - 1) + [1.0]


def test_known_coefficient_values():
    assert bezier(0.5, 3).tolist() == [0.25, 0.5, 0.25]
    torch.testing.assert_close(bezier(0.3, 4), torch.tensor([0.343, 0.441, 0.189, 0.027]))
    assert polychain(0.25, 3).tolist() == [0.5, 0.5, 0.0]
    torch.testing.assert_close(polychain(0.6, 5), torch.tensor([0.0, 0.0, 0.6, 0.4, 0.0]))


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        bezier(1.5, 3)
    with pytest.raises(ConfigError, match="num_bends"):
        CurveModel(TinyNet(), num_bends=1)
    with pytest.raises(ConfigError, match="kind"):
        CurveModel(TinyNet(), kind="spline")
    with pytest.raises(ConfigError, match="single number"):
        make_curve()[0].weights(torch.tensor([0.1, 0.2]))


def test_bezier_three_weights_at_half_are_the_quarter_half_quarter_mix():
    curve, _, _ = make_curve()
    weights = curve.weights(0.5)
    theta = [curve.bend(j) for j in range(3)]
    for name, value in weights.items():
        torch.testing.assert_close(value, theta[0][name] / 4 + theta[1][name] / 2 + theta[2][name] / 4)


@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_weights_match_an_explicit_sum_over_bends(kind, bends):
    curve, _, _ = make_curve(kind, bends)
    with torch.no_grad():
        for bend in range(1, bends - 1):
            for value in curve.bend(bend).values():
                value.normal_()  # off the straight segment, so the check is not trivially linear
    coefficients = {"bezier": bezier, "polychain": polychain}[kind]
    for t in (0.0, 0.17, 0.5, 0.83, 1.0):
        expected = coefficients(t, bends)
        for name, value in curve.weights(t).items():
            reference = sum(expected[j] * curve.bend(j)[name] for j in range(bends))
            torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_curve_reproduces_the_endpoints(kind, bends):
    curve, start, end = make_curve(kind, bends)
    x = torch.rand(6, 3, 8, 8)
    torch.testing.assert_close(curve(x, 0.0), start(x), rtol=0, atol=0)
    torch.testing.assert_close(curve.endpoint(0)(x), start(x), rtol=0, atol=0)
    torch.testing.assert_close(curve.endpoint(1).eval()(x), end(x), rtol=0, atol=0)
    curve.template.load_state_dict(end.state_dict())  # the same BN buffers as B
    torch.testing.assert_close(curve(x, 1.0), end(x), rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_only_free_bends_get_gradients(kind, bends):
    curve, _, _ = make_curve(kind, bends)
    curve.train()
    curve(torch.rand(4, 3, 8, 8), 0.37).square().sum().backward()
    free = {id(p) for j in range(1, bends - 1) for p in curve.bend(j).values()}
    assert {id(p) for p in curve.trainable_parameters()} == free
    for name, parameter in curve.named_parameters():
        if id(parameter) in free:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    assert all(isinstance(b, torch.Tensor) for b in curve.endpoint_buffers.buffers())


def test_fix_start_false_makes_the_first_bend_trainable():
    curve, _, _ = make_curve(fix_start=False)
    trainable = {id(p) for p in curve.trainable_parameters()}
    assert {id(p) for p in curve.bend(0).values()} <= trainable
    assert not {id(p) for p in curve.bend(2).values()} & trainable
    curve(torch.rand(2, 3, 8, 8), 0.2).sum().backward()
    assert all(p.grad is not None for p in curve.bend(0).values())


def test_tied_weights_stay_tied():
    curve, start, end = make_curve(factory=TiedNet)
    assert curve.parameter_names == ["encode.weight", "encode.bias", "decode.bias"]
    x, t = torch.randn(5, 4), 0.3
    w = curve.weights(t)
    hidden = torch.tanh(nn.functional.linear(x, w["encode.weight"], w["encode.bias"]))
    reference = nn.functional.linear(hidden, w["encode.weight"], w["decode.bias"])
    torch.testing.assert_close(curve(x, t), reference)
    point = curve.materialize(t)
    assert point.decode.weight is point.encode.weight
    torch.testing.assert_close(point(x), reference)
    torch.testing.assert_close(curve(x, 0.0), start(x))
    torch.testing.assert_close(curve.endpoint(1)(x), end(x))


def test_set_endpoints_names_the_mismatched_tensor():
    curve = CurveModel(TinyNet(width=4))
    good, wide = TinyNet(width=4).state_dict(), TinyNet(width=6).state_dict()
    expected = r"endpoint B has 'features.0.weight' of shape \[6, 3, 3, 3\], the network expects \[4, 3, 3, 3\]"
    with pytest.raises(CheckpointError, match=expected):
        curve.set_endpoints(good, wide)
    del good["classifier.bias"]
    with pytest.raises(CheckpointError, match="endpoint A lacks 'classifier.bias'"):
        curve.set_endpoints(good, TinyNet().state_dict())
    prefixed = {f"net.{key}": value for key, value in TinyNet().state_dict().items()}
    curve.set_endpoints(prefixed, prefixed)  # a system's prefix is stripped


@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_materialize_equals_the_view_and_is_independent(kind, bends):
    curve, _, _ = make_curve(kind, bends)
    x, t = torch.rand(4, 3, 8, 8), 0.4
    point = curve.materialize(t)
    assert list(point.state_dict()) == list(curve.template.state_dict())
    torch.testing.assert_close(point.eval()(x), curve.at(t)(x))
    torch.testing.assert_close(curve.at(t)(x), curve(x, t))
    before = point(x)
    with torch.no_grad():
        for value in curve.bend(1).values():
            value.add_(1.0)
    torch.testing.assert_close(point(x), before)


def test_view_reaches_the_template_modes_and_train_mode_updates_bn_like_the_template():
    curve, _, _ = make_curve()
    x, t = torch.rand(8, 3, 8, 8), 0.6
    reference = curve.materialize(t).train()
    point = curve.at(t).train()
    assert curve.template.training and curve.template.features[1].training
    point(x)
    reference(x)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(curve.template.get_buffer(name), buffer, msg=name)
    point.eval()
    assert not curve.template.features[1].training


def test_two_bend_curve_is_the_straight_segment():
    curve, start, end = make_curve(bends=2)
    a, b = start.state_dict(), end.state_dict()
    for name, value in curve.weights(0.3).items():
        torch.testing.assert_close(value, 0.7 * a[name] + 0.3 * b[name])
    x = torch.rand(3, 3, 8, 8)
    plain = copy.deepcopy(start)
    plain.load_state_dict({**a, **{k: 0.7 * a[k] + 0.3 * b[k] for k in curve.parameter_names}})
    torch.testing.assert_close(curve(x, 0.3), plain(x))


def test_state_dict_is_readable_and_self_contained():
    curve, _, end = make_curve()
    state = curve.state_dict()
    assert "bends.1.features-0-weight" in state and "endpoint_buffers.1.features-1-running_mean" in state
    resumed = CurveModel(TinyNet())
    resumed.load_state_dict(state)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(resumed.endpoint(1).eval()(x), end(x), rtol=0, atol=0)
    torch.testing.assert_close(resumed.eval()(x, 0.5), curve(x, 0.5), rtol=0, atol=0)


def test_training_the_curve_lowers_the_loss_in_the_middle():
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))

    def fitted(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(60):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        return net

    start, end = fitted(1), fitted(2)
    curve = CurveModel(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)))
    curve.set_endpoints(start.state_dict(), end.state_dict())
    optimizer = torch.optim.SGD(curve.trainable_parameters(), lr=0.1, momentum=0.9)
    before = nn.functional.cross_entropy(curve(x, 0.5), y).item()
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(curve(x, torch.rand(()).item()), y).backward()
        optimizer.step()
    after = nn.functional.cross_entropy(curve(x, 0.5), y).item()
    assert after < 0.5 * before  # the straight segment has a barrier; the trained curve goes around it


def test_resnet18_template():
    def factory() -> nn.Module:
        return torchvision.models.resnet18(num_classes=10)

    start, end = factory().eval(), factory().eval()
    curve = CurveModel(factory(), num_bends=3)
    curve.set_endpoints(start.state_dict(), end.state_dict())
    curve.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(curve(x, 0.0), start(x))
        torch.testing.assert_close(curve.endpoint(1)(x), end(x))
    curve.train()
    curve(x, 0.5).sum().backward()
    trainable = list(curve.trainable_parameters())
    assert len(trainable) == len(list(start.parameters())) and all(p.grad is not None for p in trainable)
