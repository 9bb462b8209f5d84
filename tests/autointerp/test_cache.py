"""DiskCache: stable keys, disk round trip, memory-only mode, unreadable files."""

import json

import pytest

from paperlib.autointerp.cache import DiskCache


def test_disk_cache_key_stable(tmp_path):
    c = DiskCache(tmp_path)
    k = c.key("b", "m", {"x": 1, "y": [1, 2]})
    assert k == c.key("b", "m", {"y": [1, 2], "x": 1})
    assert c.get(k) is None
    c.put(k, {"x": 1}, {"content": "ok"})
    assert c.get(k) == {"content": "ok"}


def test_key_depends_on_backend_model_endpoint_and_request():
    k = DiskCache.key("b", "m", {"x": 1})
    assert len({k, DiskCache.key("b2", "m", {"x": 1}), DiskCache.key("b", "m2", {"x": 1}),
                DiskCache.key("b", "m", {"x": 2}), DiskCache.key("b", "m", {"x": 1}, endpoint="http://a/v1"),
                DiskCache.key("b", "m", {"x": 1}, endpoint="http://b/v1")}) == 6


def test_disk_round_trip_in_a_new_instance(tmp_path):
    k = DiskCache.key("b", "m", "req")
    DiskCache(tmp_path).put(k, "req", [1.5, -2.0])
    path = DiskCache(tmp_path).path(k)
    assert path.parent.name == k[:2]
    assert json.loads(path.read_text()) == {"request": "req", "response": [1.5, -2.0]}
    assert DiskCache(tmp_path).get(k) == [1.5, -2.0]
    path.write_text("{broken")  # unreadable file: a miss, not an error
    assert DiskCache(tmp_path).get(k) is None


def test_memory_only_cache_drops_oldest():
    c = DiskCache(None, memory_items=2)
    for i in range(3):
        c.put(str(i), None, i)
    assert [c.get(str(i)) for i in range(3)] == [None, 1, 2]
    with pytest.raises(ValueError):
        c.path("0")
