"""Job spec validation and the reducer partition function."""

from __future__ import annotations

import pytest

from jobs.errors import InvalidJobSpec
from jobs.runner import partition_of
from jobs.spec import LIMITS, parse_input, parse_spec


def test_defaults_and_round_trip() -> None:
    spec = parse_spec({"name": "wc", "phases": [{"exec": "wc -l"}, {"type": "reduce", "exec": "awk '{s+=$1} END {print s}'",
                                                                   "count": 3}],
                       "inputs": ["b/k1", "b/dir/k2"]})
    assert spec.name == "wc" and spec.inputs == ("b/k1", "b/dir/k2")
    first, second = spec.phases
    assert (first.type, first.count, first.memory_mb, first.disk_mb, first.timeout_s) == (
        "map", 1, LIMITS["memory_mb"][0], LIMITS["disk_mb"][0], LIMITS["timeout_s"][0])
    assert second.type == "reduce" and second.count == 3
    assert second.to_dict()["assets"] == []


@pytest.mark.parametrize(("raw", "message"), [
    ("not a dict", "JSON object"),
    ({}, "at least one phase"),
    ({"phases": []}, "at least one phase"),
    ({"phases": [{"type": "shuffle", "exec": "x"}]}, "map or reduce"),
    ({"phases": [{"exec": ""}]}, "non-empty command"),
    ({"phases": [{"exec": "x", "count": 2}]}, "reduce phases only"),
    ({"phases": [{"type": "reduce", "exec": "x", "count": 0}]}, "between"),
    ({"phases": [{"exec": "x", "memory_mb": 10**9}]}, "between"),
    ({"phases": [{"exec": "x", "timeout_s": "soon"}]}, "must be a number"),
    ({"phases": [{"exec": "x", "memory_mb": 1.5}]}, "whole number"),
    ({"phases": [{"exec": "x", "assets": "b/k"}]}, "list of bucket/key"),
    ({"phases": [{"exec": "x", "assets": ["nokey"]}]}, "bucket/key"),
    ({"phases": [{"exec": "x", "color": "red"}]}, "unknown field"),
    ({"phases": [{"exec": "x"}], "inputs": ["justabucket"]}, "bucket/key"),
    ({"phases": [{"exec": "x"}] * 40}, "at most"),
])
def test_invalid_specs_say_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(InvalidJobSpec, match=message):
        parse_spec(raw)


def test_parse_input() -> None:
    assert parse_input("bucket/a/b c") == ("bucket", "a/b c")
    assert parse_input("/bucket/key") == ("bucket", "key")
    for bad in ("bucket", "bucket/", "/key", "b/" + "k" * 1025, "b/a\0b"):
        with pytest.raises(InvalidJobSpec):
            parse_input(bad)


def test_partition_is_stable_and_keyed_by_text_before_tab() -> None:
    assert partition_of(b"apple\t1\n", 7) == partition_of(b"apple\t99", 7)
    assert partition_of(b"apple", 7) == partition_of(b"apple\tx", 7)
    spread = {partition_of(f"key{i}\tv".encode(), 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}
    assert all(0 <= partition_of(f"k{i}".encode(), 3) < 3 for i in range(50))
