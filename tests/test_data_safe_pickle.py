"""The restricted unpickler admits plain data and numpy arrays, and nothing else."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from prunekit.data import restricted_load


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_and_arrays_round_trip(protocol):
    data = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        b"labels": [1, 2, 3],
        "f": np.ones(2),
    }
    out = restricted_load(pickle.dumps(data, protocol=protocol))
    assert out[b"labels"] == [1, 2, 3]
    assert np.array_equal(out[b"data"], data[b"data"]) and out[b"data"].dtype == np.uint8


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize(
    "payload",
    [
        _Exploit(),
        collections.OrderedDict(a=1),
        np.array([object()], dtype=object),
        {1, 2}.__class__,
    ],
)
def test_non_plain_objects_are_rejected(payload):
    with pytest.raises(pickle.UnpicklingError, match="restricted unpickler"):
        restricted_load(pickle.dumps(payload, protocol=2))
