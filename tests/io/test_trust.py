"""RestrictedUnpickler and refused_global: pickles from elsewhere are read as data, never as code."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from mcrobust.io.trust import NUMPY_ARRAYS, RestrictedUnpickler, refused_global


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def restricted_load(data: bytes, allowed=NUMPY_ARRAYS):
    return RestrictedUnpickler(io.BytesIO(data), allowed, encoding="latin1").load()


def test_plain_containers_and_numpy_arrays_round_trip():
    batch = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3], "name": "batch", "x": 1.5}
    loaded = restricted_load(pickle.dumps(batch, protocol=4))  # CIFAR-10's batches: arrays by _reconstruct
    assert loaded.keys() == batch.keys() and loaded["labels"] == [1, 2, 3] and loaded["x"] == 1.5
    np.testing.assert_array_equal(loaded["data"], batch["data"])
    assert loaded["data"].dtype == np.uint8


def test_a_global_outside_the_allow_list_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError) as error:
        restricted_load(pickle.dumps({"data": RunsCode(str(marker))}))
    assert not marker.exists()
    assert refused_global(error.value) == "io.open"  # `open` pickles as io.open
    with pytest.raises(pickle.UnpicklingError):  # an empty allow-list refuses even numpy
        restricted_load(pickle.dumps(np.zeros(2)), allowed=())


def test_refused_global_reads_torchs_weights_only_refusal_too(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": RunsCode(str(tmp_path / "pwned"))}, path)
    with pytest.raises(pickle.UnpicklingError) as error:
        torch.load(path, weights_only=True)
    assert refused_global(error.value) == "io.open"  # the callable of the object's reduce, refused before it runs
    assert not os.path.exists(tmp_path / "pwned")


def test_other_failures_name_no_global():
    assert refused_global(ValueError("GLOBAL os.system")) is None  # only an unpickler's refusal counts
    with pytest.raises(pickle.UnpicklingError) as error:
        restricted_load(b"\x80\x04garbage")
    assert refused_global(error.value) is None
