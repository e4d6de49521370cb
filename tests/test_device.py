from __future__ import annotations

import pytest

from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import UsageError


@pytest.mark.parametrize(
    ("text", "kind", "indices", "printed"),
    [
        ("cpu", "cpu", (), "cpu"),
        ("cuda", "cuda", (), "cuda"),
        ("cuda:1", "cuda", (1,), "cuda:1"),
        ("cuda:0,1", "cuda", (0, 1), "cuda:0,1"),
        ("rocm:0", "rocm", (0,), "rocm:0"),
        ("qaic:0-3", "qaic", (0, 1, 2, 3), "qaic:0-3"),
        ("qaic:0-2,5,7-9", "qaic", (0, 1, 2, 5, 7, 8, 9), "qaic:0-2,5,7-9"),
        ("CUDA:2", "cuda", (2,), "cuda:2"),
    ],
)
def test_parse_and_print_round_trip(text: str, kind: str, indices: tuple[int, ...], printed: str) -> None:
    device = Device.parse(text)
    assert (device.kind, device.indices) == (kind, indices)
    assert str(device) == printed
    assert Device.parse(str(device)) == device


def test_units_split_a_multi_unit_device() -> None:
    assert Device.parse("qaic:0-3").units() == [Device("qaic", (i,)) for i in range(4)]
    assert Device.parse("cpu").units() == [Device("cpu")]
    assert Device.parse("cuda:3").index == 3


@pytest.mark.parametrize("text", ["", "cuda:", "cuda:a", "cuda:3-1", "cuda:0,0", "9gpu", "cuda:1-"])
def test_bad_devices_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        Device.parse(text)
    assert info.value.hint
