"""load_weights / save_weights: every accepted format round-trips, unsafe or damaged files are refused."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mcrobust.errors import CheckpointError
from mcrobust.io.checkpoints import load_weights, save_weights


def small_net(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Flatten(), nn.Linear(width * 4, 2))


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode, self.decode = nn.Linear(3, 3), nn.Linear(3, 3)
        self.decode.weight = self.encode.weight


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def one_line_error(call, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    net = small_net()
    net[1].running_mean.uniform_()
    return net.state_dict()


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def lightning(state: dict[str, torch.Tensor], attribute: str) -> dict:
    """The shape of a Lightning `.ckpt`: the system's state_dict, keys prefixed by the net's attribute."""
    return {"pytorch-lightning_version": "2.6.6", "epoch": 0, "state_dict": prefixed(attribute, state)}


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [
        ("plain.pt", lambda s: s),
        ("ddp.pth", lambda s: prefixed("module.", s)),
        ("wrapped.pt", lambda s: {"state_dict": s, "epoch": 3}),
        ("model.pt", lambda s: {"model": prefixed("module.net.", s), "optimizer": {}}),
        ("system.ckpt", lambda s: lightning(s, "net.")),
        ("other.ckpt", lambda s: lightning(s, "backbone.")),
    ],
    ids=["pt", "pth-module", "state_dict-wrapped", "model-wrapped", "lightning-net", "lightning-attribute"],
)
def test_pickled_formats_round_trip(tmp_path, state, filename, wrap):
    path = tmp_path / filename
    torch.save(wrap(state), path)
    assert_same(load_weights(path), state)
    assert_same(load_weights(path, template=small_net()), state)


def test_safetensors_round_trip_with_tied_and_non_contiguous_tensors(tmp_path):
    net = TiedNet()
    state = {**net.state_dict(), "transposed": torch.arange(6.0).view(2, 3).t()}
    path = save_weights(state, tmp_path / "out" / "point.safetensors")
    assert_same(load_weights(path), state)
    assert not [name for name in os.listdir(path.parent) if name.endswith(".tmp")]
    one_name_per_tensor = {name: value.detach() for name, value in net.named_parameters()}  # as save_model writes
    save_file(one_name_per_tensor, tmp_path / "deduplicated.safetensors")
    loaded = load_weights(tmp_path / "deduplicated.safetensors", template=TiedNet())  # the alias is filled in
    assert list(loaded) == list(net.state_dict())
    assert_same(loaded, net.state_dict())


def test_save_weights_pt_is_atomic_and_replaces(tmp_path, state):
    path = tmp_path / "weights.pt"
    save_weights({"old": torch.zeros(1)}, path)
    save_weights(state, path)
    assert_same(load_weights(path), state)
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_weights({"bad": 1.0}, path)  # type: ignore[dict-item]
    assert_same(load_weights(path), state)  # the earlier file is intact
    assert sorted(os.listdir(tmp_path)) == ["weights.pt"]


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    created = tmp_path / "created-by-unpickling"

    class Payload:
        def __reduce__(self):
            return (open, (str(created), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    message = one_line_error(lambda: load_weights(path), "refusing to unpickle")
    assert "open" in message and "re-save it as a plain state_dict or .safetensors" in message
    assert not created.exists()
    torch.load(path, weights_only=False)  # the control: a trusting loader does run it
    assert created.exists()


def test_damaged_or_missing_files_are_reported(tmp_path, state):
    one_line_error(lambda: load_weights(tmp_path / "absent.pt"), "does not exist")
    one_line_error(lambda: load_weights(tmp_path), "is a folder")
    whole = tmp_path / "whole.pt"
    torch.save(state, whole)
    data = whole.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_weights(tmp_path / "truncated.pt"), "truncated or corrupt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    one_line_error(lambda: load_weights(tmp_path / "garbage.pth"), "truncated or corrupt")
    save_weights(state, tmp_path / "whole.safetensors")
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-40])
    one_line_error(lambda: load_weights(tmp_path / "truncated.safetensors"), "truncated or corrupt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    one_line_error(lambda: load_weights(tmp_path / "list.pt"), "not a state_dict")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused(tmp_path, state, bad):
    state["3.weight"][0, 1] = bad
    torch.save(state, tmp_path / "diverged.pt")
    one_line_error(lambda: load_weights(tmp_path / "diverged.pt"), "NaN or infinite values in '3.weight'")


def test_mismatches_name_the_first_offending_tensor(tmp_path):
    torch.save({f"net.{k}": v for k, v in small_net(width=6).state_dict().items()}, tmp_path / "wide.pt")
    message = one_line_error(lambda: load_weights(tmp_path / "wide.pt", template=small_net(width=4)), "'0.weight'")
    assert "of shape [6, 3, 3, 3], the network expects [4, 3, 3, 3]" in message
    state = small_net().state_dict()
    torch.save({**state, "extra.weight": torch.zeros(2, 2)}, tmp_path / "extra.pt")
    one_line_error(
        lambda: load_weights(tmp_path / "extra.pt", template=small_net()), "'extra.weight' of shape \\[2, 2\\]"
    )
    del state["1.running_var"]
    torch.save(state, tmp_path / "short.pt")
    one_line_error(lambda: load_weights(tmp_path / "short.pt", template=small_net()), "lacks '1.running_var'")


def test_a_curve_checkpoint_is_not_a_weights_source(tmp_path):
    curve_state = {"curve.bends.0.fc-weight": torch.zeros(2), "curve.template.fc.weight": torch.zeros(2)}
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": curve_state}, tmp_path / "path.ckpt")
    one_line_error(lambda: load_weights(tmp_path / "path.ckpt"), "curve checkpoint")


# Checkpoints in the wild: other code bases' containers, prefixes and extra entries.


def other_state(seed: int = 5) -> dict[str, torch.Tensor]:
    """Weights of the same architecture with other values, to tell two copies in one file apart."""
    torch.manual_seed(seed)
    return small_net().state_dict()


def optimizer_state(net: nn.Module) -> dict:
    """A real Adam state after one step: tensors under int keys, floats and lists beside them."""
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.rand(2, 3, 4, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"net": s, "acc": 0.9, "epoch": 3, "arch": "small"},
        lambda s: {"state_dict": s, "optimizer": optimizer_state(small_net())},
        lambda s: {"model_state_dict": s, "optimizer_state_dict": optimizer_state(small_net()), "loss": 0.1},
        lambda s: {"model": prefixed("module.", s), "epoch": 7},
        lambda s: {"network": prefixed("model.", s)},
        lambda s: {"params": prefixed("_orig_mod.", s)},
        lambda s: {"module": prefixed("module._orig_mod.", s)},
        lambda s: {"state_dict": s, "best_acc": torch.tensor(0.93), "step": torch.tensor(100)},
        lambda s: {"checkpoint": {"model": {"network": {"module": s}}}, "meta": {"epoch": 1}},
    ],
    ids=[
        "net-with-scalars",
        "state_dict-with-optimizer",
        "model_state_dict",
        "model-module-prefix",
        "network-model-prefix",
        "params-compiled",
        "module-ddp-compiled",
        "tensor-scalars-beside",
        "four-levels-deep",
    ],
)
def test_checkpoints_of_other_code_bases_load(tmp_path, state, wrap):
    path = tmp_path / "foreign.pt"
    torch.save(wrap(state), path)
    assert list(load_weights(path, template=small_net())) == list(state)  # the template's key order
    assert_same(load_weights(path, template=small_net()), state)
    assert_same(load_weights(path), state)


def test_weights_deeper_than_four_containers_are_not_searched(tmp_path, state):
    torch.save({"a": {"b": {"c": {"d": {"e": state}}}}, "epoch": 1}, tmp_path / "deep.pt")
    message = one_line_error(lambda: load_weights(tmp_path / "deep.pt"), "holds no tensors")
    assert "top-level keys: 'a', 'epoch'" in message


@pytest.mark.parametrize("ema_first", [False, True], ids=["model-first", "ema-first"])
@pytest.mark.parametrize(
    ("model_key", "ema_key"),
    [("model", "model_ema"), ("state_dict", "state_dict_ema"), ("net", "ema"), ("model_state_dict", "ema_state_dict")],
)
def test_a_model_is_preferred_to_its_ema_copy_when_both_fit(tmp_path, state, model_key, ema_key, ema_first):
    pairs = [(model_key, state), (ema_key, other_state())]
    torch.save(dict(pairs[::-1] if ema_first else pairs), tmp_path / "both.pt")
    assert_same(load_weights(tmp_path / "both.pt", template=small_net()), state)
    assert_same(load_weights(tmp_path / "both.pt"), state)


def test_the_copy_that_fits_the_template_is_taken(tmp_path, state):
    wide = small_net(width=6).state_dict()
    torch.save({"model": wide, "model_ema": state, "epoch": 2}, tmp_path / "ema-fits.pt")
    assert_same(load_weights(tmp_path / "ema-fits.pt", template=small_net()), state)
    assert_same(load_weights(tmp_path / "ema-fits.pt", template=small_net(width=6)), wide)


def test_a_model_and_an_ema_prefix_in_one_state_dict(tmp_path, state):
    system = {**prefixed("ema.", other_state()), **prefixed("model.module.", state)}  # EMA first, shorter prefix
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": system}, tmp_path / "system.ckpt")
    assert_same(load_weights(tmp_path / "system.ckpt", template=small_net()), state)
    assert_same(load_weights(tmp_path / "system.ckpt"), state)


class Wrapper(nn.Module):
    """A wrapper whose keys carry `net.`, as AdaptedNet's do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_net()


@pytest.mark.parametrize("prefix", ["", "module.", "net."], ids=["plain", "ddp", "already-wrapped"])
def test_a_wrapping_template_gets_its_prefix_added(tmp_path, state, prefix):
    torch.save({"state_dict": prefixed(prefix, state)}, tmp_path / "inner.pt")
    loaded = load_weights(tmp_path / "inner.pt", template=Wrapper())
    assert_same(loaded, prefixed("net.", state))
    Wrapper().load_state_dict(loaded)  # strict


def test_nothing_fitting_is_one_line_naming_top_level_keys_and_first_mismatch(tmp_path):
    wide = small_net(width=6)
    torch.save({"net": wide.state_dict(), "acc": 0.9, "optimizer": optimizer_state(wide)}, tmp_path / "wide.pt")
    message = one_line_error(lambda: load_weights(tmp_path / "wide.pt", template=small_net()), "no weights in")
    assert "top-level keys: 'net', 'acc', 'optimizer'" in message
    assert "the closest, ['net'], has '0.weight' of shape [6, 3, 3, 3], the network expects [4, 3, 3, 3]" in message
    state = small_net().state_dict()
    del state["3.bias"]
    torch.save({"model": {"module": prefixed("module.", state)}, "epoch": 1}, tmp_path / "short.pt")
    message = one_line_error(lambda: load_weights(tmp_path / "short.pt", template=small_net()), "lacks '3.bias'")
    assert "the closest, ['model']['module']," in message and "top-level keys: 'model', 'epoch'" in message
