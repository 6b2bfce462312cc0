"""The sharding simulation (bench/shard_sim.py): its placements, shares and command line."""

from __future__ import annotations

import json

import pytest
from redis.crc import key_slot

from bench import shard_sim


def test_shares_sum_to_one_largest_first() -> None:
    assert shard_sim.shares("equal", 4) == [0.25] * 4
    zipf = shard_sim.shares("zipf", 3)
    assert zipf == sorted(zipf, reverse=True) and sum(zipf) == pytest.approx(1.0)
    assert zipf[0] == pytest.approx(6 / 11)


def test_a_set_lies_on_the_node_of_its_tags_slot() -> None:
    slot = key_slot(b"{cap:echo}")
    assert shard_sim.node_of("echo", 3) == slot * 3 // 16384
    assert key_slot(b"orch:{cap:echo}:bl:n") == slot  # every key of the set, one slot


def test_assigned_shards_balance_and_one_hot_set_caps_the_cluster() -> None:
    assert shard_sim.busiest_assigned([0.25] * 4, 2) == pytest.approx(0.5)
    assert shard_sim.busiest_assigned(shard_sim.shares("zipf", 3), 6) == pytest.approx(6 / 11)
    names = ["a", "b", "c"]
    hashed = shard_sim.busiest_hashed([1 / 3] * 3, names, 3)
    assert hashed >= 1 / 3 - 1e-9


def test_hashing_names_spreads_worse_than_assigning_shards() -> None:
    rows = shard_sim.simulate([3], trials=200, set_counts=(12,))
    by = {(r.workload, r.placement): r for r in rows}
    assert by[("equal", "assigned")].busiest == pytest.approx(1 / 3)
    assert by[("equal", "hashed")].busiest > by[("equal", "assigned")].busiest
    assert by[("equal", "hashed")].busiest_p95 >= by[("equal", "hashed")].busiest


def test_the_command_prints_a_table_and_json(capsys) -> None:
    assert shard_sim.main(["--nodes", "3", "--trials", "20", "--per-core", "1000"]) == 0
    out = capsys.readouterr().out
    assert "| equal | 12 | 3 | assigned | 0.33 | 3.00 (3,000/s) |" in out
    assert shard_sim.main(["--nodes", "3", "--trials", "20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["placement"] for r in rows} == {"hashed", "assigned"}
    with pytest.raises(SystemExit):
        shard_sim.main(["--nodes", "three"])
