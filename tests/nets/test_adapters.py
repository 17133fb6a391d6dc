"""Foreign nets in mcrobust's conventions: the normalize setting, pixels in, logits out, the user's own keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torchvision.transforms.v2.functional import normalize as torchvision_normalize

from mcrobust.errors import CheckpointError, ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.nets import AdaptedNet, adapt_net, parse_normalize, unwrap_net, unwrap_state_dict
from mcrobust.paths.curves import CurveModel

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ForeignNet(nn.Module):
    """A user's class: its own attribute names, BatchNorm, and optionally a softmax at the end."""

    def __init__(self, last: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.last = last if last is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.head(self.body(x)))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("none", None),
        ("imagenet", IMAGENET),
        (" ImageNet ", IMAGENET),
        ("0.5,0.5", ((0.5,), (0.5,))),
        ("0.1, 0.3", ((0.1,), (0.3,))),
        ('{"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}', ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))),
        ("[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]", ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))),
        ("[0.5, 0.25]", ((0.5,), (0.25,))),
        ((0.5, 0.25), ((0.5,), (0.25,))),
        ([[0.1, 0.2], [0.3, 0.4]], ((0.1, 0.2), (0.3, 0.4))),
        ({"mean": [0.1, 0.2, 0.3], "std": 0.5}, ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))),
        ((0, 1), ((0.0,), (1.0,))),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_parse_normalize_accepts_every_documented_form(spec, expected):
    assert parse_normalize(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("imagenett", "normalize must be 'imagenet'"),
        ("0.5", "normalize must be"),
        ("0.1,0.2,0.3", "normalize must be"),
        ("a,b", "normalize must be"),
        ("{not json", "normalize must be"),
        ('"imagenet"', "normalize must be"),
        ('{"mean": [0.5]}', "normalize must be"),
        ((0.5,), "normalize must be"),
        ((True, 1.0), "normalize must be"),
        ((0.5, 0.0), "stds > 0"),
        ("0.5,-1", "stds > 0"),
        ("nan,1", "finite"),
        ([[0.1, 0.2], [0.3, 0.4, 0.5]], "2 means but 3 stds"),
        (3, "normalize must be"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_parse_normalize_refuses_bad_specs_in_one_line(spec, fragment):
    with pytest.raises(ConfigError, match="normalize") as caught:
        parse_normalize(spec)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_normalisation_equals_torchvision_normalize():
    torch.manual_seed(0)
    net = ForeignNet().eval()
    x = torch.rand(6, 3, 6, 6)
    adapted = AdaptedNet(net, *IMAGENET).eval()
    expected = net(torchvision_normalize(x, list(IMAGENET[0]), list(IMAGENET[1])))
    torch.testing.assert_close(adapted(x), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(AdaptedNet(net, 0.5, 0.25)(x), net((x - 0.5) / 0.25), rtol=1e-6, atol=1e-6)
    assert torch.equal(AdaptedNet(net)(x), net(x))  # nothing to adapt: the same function


def test_a_channel_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="3 channels but the input has shape \\[2, 1, 6, 6\\]"):
        AdaptedNet(ForeignNet(), *IMAGENET)(torch.rand(2, 1, 6, 6))


@pytest.mark.parametrize(
    ("last", "output"),
    [(nn.Softmax(dim=1), "probabilities"), (nn.LogSoftmax(dim=1), "log_probabilities")],
    ids=["softmax", "log-softmax"],
)
def test_a_probability_output_trains_like_its_logits(last, output):
    """CE on the adapted output has the loss and gradients of CE on the pre-softmax scores."""
    torch.manual_seed(1)
    net = ForeignNet(last).double()
    scores = ForeignNet().double()  # the same net without its last layer
    scores.load_state_dict(net.state_dict())
    adapted = AdaptedNet(net, 0.5, 0.5, output=output)
    x, y = torch.rand(8, 3, 6, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    with torch.no_grad():
        net.head.weight.mul_(30.0)  # confident scores (spread over tens): far from the clamp, still exact
        scores.head.weight.copy_(net.head.weight)
    loss = F.cross_entropy(adapted(x), y)
    reference = F.cross_entropy(scores((x - 0.5) / 0.5), y)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    expected = torch.autograd.grad(reference, list(scores.parameters()))
    assert max(grad.abs().max() for grad in expected) > 1e-2  # a real gradient, not zeros
    for grad, reference_grad in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    assert torch.equal(adapted(x).argmax(1), scores((x - 0.5) / 0.5).argmax(1))


def test_a_plain_softmax_is_not_a_logit():
    """The control: CE straight on probabilities gives other gradients, which is why the adapter exists."""
    torch.manual_seed(1)
    net, scores = ForeignNet(nn.Softmax(dim=1)), ForeignNet()
    scores.load_state_dict(net.state_dict())
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 5, (8,))
    wrong = torch.autograd.grad(F.cross_entropy(net(x), y), [net.head.weight])[0]
    right = torch.autograd.grad(F.cross_entropy(scores(x), y), [scores.head.weight])[0]
    assert not torch.allclose(wrong, right, rtol=1e-2, atol=1e-4)


def test_an_underflowing_probability_gives_a_finite_loss():
    net = nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[500.0, 0.0], [0.0, 0.0], [-500.0, 0.0]]))
        net[0].bias.zero_()
    loss = F.cross_entropy(AdaptedNet(net, output="probabilities")(torch.ones(1, 2)), torch.tensor([2]))
    assert torch.isfinite(loss) and loss > 80  # p underflows to 0: clamped at float32's tiny, -log = 87.3


def test_state_dict_holds_exactly_the_users_keys_under_net():
    torch.manual_seed(2)
    inner = ForeignNet(nn.Softmax(dim=1))
    adapted = AdaptedNet(inner, *IMAGENET, output="probabilities")
    assert list(adapted.state_dict()) == [f"net.{key}" for key in inner.state_dict()]
    assert {name for name, _ in adapted.named_buffers()} >= {"mean", "std"}  # there, but not persistent
    bare = ForeignNet(nn.Softmax(dim=1))
    bare.load_state_dict(adapted.inner_state_dict())  # strict
    bare.load_state_dict(unwrap_state_dict(adapted.state_dict()))
    assert unwrap_net(adapted) is inner and unwrap_net(inner) is inner
    with pytest.raises(CheckpointError, match="not the state_dict of an AdaptedNet"):
        unwrap_state_dict(inner.state_dict())


def test_a_checkpoint_of_the_bare_class_loads_into_the_adapted_net(tmp_path):
    torch.manual_seed(3)
    trained = ForeignNet()
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 9}, tmp_path / "w.pt")
    adapted = AdaptedNet(ForeignNet(), *IMAGENET)
    adapted.load_state_dict(load_weights(tmp_path / "w.pt", template=adapted))
    x = torch.rand(3, 3, 6, 6)
    torch.testing.assert_close(adapted.eval()(x), trained.eval()(torchvision_normalize(x, *map(list, IMAGENET))))


def test_adapt_net_wraps_only_when_something_is_to_adapt():
    net = ForeignNet()
    assert adapt_net(net) is net and adapt_net(net, "none", "logits") is net
    adapted = adapt_net(net, "imagenet", "probabilities")
    assert isinstance(adapted, AdaptedNet) and adapted.output == "probabilities"
    assert adapted.mean is not None and adapted.mean.tolist() == pytest.approx(IMAGENET[0])
    only_output = adapt_net(net, output="log_probabilities")
    assert isinstance(only_output, AdaptedNet) and only_output.mean is None
    with pytest.raises(ConfigError, match="output must be one of logits, probabilities, log_probabilities"):
        adapt_net(net, output="softmax")
    with pytest.raises(ConfigError, match="both mean and std"):
        AdaptedNet(net, mean=0.5)


def test_functional_call_with_parameters_and_buffers_is_strict_and_equal():
    torch.manual_seed(4)
    adapted = AdaptedNet(ForeignNet(nn.Softmax(dim=1)), *IMAGENET, output="probabilities").eval()
    tensors = {**dict(adapted.named_parameters()), **dict(adapted.named_buffers())}
    x = torch.rand(4, 3, 6, 6)
    torch.testing.assert_close(functional_call(adapted, tensors, (x,), strict=True), adapted(x), rtol=0, atol=0)
    double = AdaptedNet(ForeignNet(), 0.5, 0.5).double()
    assert double.mean is not None and double.mean.dtype == torch.float64  # buffers follow .to()


def _trained_endpoint(seed: int) -> ForeignNet:
    torch.manual_seed(seed)
    net = ForeignNet(nn.Softmax(dim=1))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_a_curve_through_adapted_nets_reproduces_both_endpoints():
    start, end = _trained_endpoint(5), _trained_endpoint(6)
    curve = CurveModel(AdaptedNet(ForeignNet(nn.Softmax(dim=1)), *IMAGENET, output="probabilities"), num_bends=3)
    curve.set_endpoints(start.state_dict(), end.state_dict())  # the bare class's keys: the prefix is added
    curve.eval()
    x = torch.rand(5, 3, 6, 6)
    adapted_start = AdaptedNet(start, *IMAGENET, output="probabilities")
    adapted_end = AdaptedNet(end, *IMAGENET, output="probabilities")
    torch.testing.assert_close(curve(x, 0.0), adapted_start(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(curve.endpoint(1)(x), adapted_end(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # at t=1 the template's buffers are endpoint A's: give it B's, as BN recompute would
        curve.template.load_state_dict({**dict(curve.template.state_dict()), **adapted_end.state_dict()})
    torch.testing.assert_close(curve(x, 1.0), adapted_end(x), rtol=1e-5, atol=1e-5)
    point = curve.materialize(0.5)
    assert isinstance(point, AdaptedNet) and point.mean is not None
    assert torch.equal(point.mean, torch.tensor(IMAGENET[0]))
    assert list(unwrap_state_dict(point.state_dict())) == list(start.state_dict())
