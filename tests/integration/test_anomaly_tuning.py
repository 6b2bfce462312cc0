"""Per-family sensitivity from labels (`anomaly tune`), the loop using it, its cold start.

On a real Redis: the CLI writes what the labelled history supports, the live loop reads it, and
a fresh cluster pages a tenfold run time within minutes."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.config import load_settings
from orchestrator.monitoring.anomaly_loop import run_anomaly
from orchestrator.monitoring.loops import LoopContext
from orchestrator.monitoring.stats import run_fields, sum_fields
from orchestrator.store.keys import ANOMALY_SENSITIVITY, events_key
from tests.support import cli, cli_json

pytestmark = pytest.mark.integration
BASE = 1_800_000_000.0  # a minute boundary
START = 1_700_006_400


def _csv(values: list[float]) -> str:
    rows = ["timestamp,value"] + [f"{START + 60 * i},{v}" for i, v in enumerate(values)]
    return "\n".join(rows) + "\n"


def labelled(root: Path) -> dict[str, list[list[str]]]:
    """p95 series whose one anomaly lies 1.6 margin units beyond a bounded noise (what the
    default sensitivity 2.0 misses and 1.0 finds, with no false flag), and throughput series
    with a spike every sensitivity finds (the default is kept: nothing beats it)."""
    windows: dict[str, list[list[str]]] = {}
    for family, k, spike in [("latency_p95_ms", k, 108.5) for k in range(3)] + [
        ("throughput", k, 500.0) for k in range(2)
    ]:
        rng = random.Random(k)
        values = [100 + rng.uniform(-5, 5) for _ in range(900)]
        at = 500 + 50 * k
        values[at] = spike
        name = f"{family}/s{k}.csv"
        (root / family).mkdir(parents=True, exist_ok=True)
        (root / name).write_text(_csv(values))
        windows[name] = [[str(START + 60 * (at - 5)), str(START + 60 * (at + 20))]]
    return windows


def test_tune_writes_the_sensitivity_the_held_out_series_support(orch_env, redis_client, tmp_path):
    data = tmp_path / "data"
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps(labelled(data)))
    # An earlier tuning of throughput that the labels no longer support is removed.
    redis_client.hset(ANOMALY_SENSITIVITY, "throughput", json.dumps({"sensitivity": 3.0}))

    dry = cli_json(orch_env, "anomaly", "tune", str(data), "--labels", str(labels), "--dry-run")
    assert dry["written"] is False and redis_client.hlen(ANOMALY_SENSITIVITY) == 1

    report = cli_json(orch_env, "anomaly", "tune", str(data), "--labels", str(labels))
    by_family = {f["family"]: f for f in report["families"]}
    latency, throughput = by_family["latency_p95_ms"], by_family["throughput"]
    assert (latency["best"], latency["adopted"], latency["sensitivity"]) == (1.0, True, 1.0)
    assert latency["default"]["hit"] == 0 and latency["held_out"]["hit"] == 3
    assert latency["held_out"]["false_flags"] == 0
    assert (throughput["adopted"], throughput["sensitivity"]) == (False, 2.0)

    stored = {k: json.loads(v) for k, v in redis_client.hgetall(ANOMALY_SENSITIVITY).items()}
    assert list(stored) == ["latency_p95_ms"]
    assert stored["latency_p95_ms"]["sensitivity"] == 1.0
    assert stored["latency_p95_ms"]["held_out_score"] == 100.0

    table = cli(orch_env, "anomaly", "tune", str(data), "--labels", str(labels)).stdout
    assert "latency_p95_ms" in table and "2 (default)" in table

    # `orchestrator anomaly` says which sensitivity each metric pages at now
    status = cli_json(orch_env, "anomaly")
    assert status["sensitivity"] == {"default": 2.0, "tuned": {"latency_p95_ms": 1.0}}
    said = cli(orch_env, "anomaly").stdout
    assert "sensitivity: 2 (default); latency_p95_ms 1 (tuned)" in said


def test_tune_refuses_a_folder_that_is_not_a_metric_family(orch_env, tmp_path):
    data = tmp_path / "data"
    (data / "cpu").mkdir(parents=True)
    (data / "cpu" / "a.csv").write_text(_csv([1.0] * 50))
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps({"cpu/a.csv": []}))
    done = cli(orch_env, "anomaly", "tune", str(data), "--labels", str(labels), check=False)
    assert done.returncode != 0 and "cpu" in done.stderr and "latency_p95_ms" in done.stderr


@pytest.fixture
def ctx(redis_url: str, tmp_path: Path) -> Iterator[LoopContext]:
    settings = load_settings(redis_url=redis_url, backup_dir=str(tmp_path / "backups"))
    context = LoopContext.from_settings(settings)
    yield context
    context.store.r.close()


def runs(task_type: str, n: int, latency_ms: float, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    return sum_fields(
        run_fields(task_type, "ok", latency_ms * (1 + rng.uniform(-0.2, 0.2)), None)
        for _ in range(n)
    )


def detected(client: redis.Redis) -> list[dict]:
    stream = events_key("anomaly.detected")
    return [json.loads(f["data"]) for _, f in client.xrange(stream)]


def feed_minutes(ctx: LoopContext, minutes: int, spike_at: int) -> None:
    """A fresh cluster: 30 runs a minute of about 20 ms, ten times slower in minute spike_at."""
    for m in range(minutes):
        latency = 200.0 if m == spike_at else 20.0
        ctx.mon.telemetry.add(runs("echo", 30, latency, m), BASE + m * 60 + 1)
        run_anomaly(ctx, BASE + (m + 1) * 60 + 2)


def test_a_fresh_cluster_pages_a_tenfold_run_time_within_minutes(ctx, redis_client):
    feed_minutes(ctx, 20, spike_at=15)
    found = {e["series"]: e for e in detected(redis_client)}
    assert set(found) == {"latency_p95_ms", "latency_p95_ms:echo"}
    assert all(e["ts"] == BASE + 16 * 60 for e in found.values())


def test_the_loop_uses_the_tuned_sensitivity_of_the_family(ctx, redis_client):
    ctx.mon.set_anomaly_tuning("latency_p95_ms", {"sensitivity": 1e9})
    assert ctx.mon.anomaly_sensitivities() == {"latency_p95_ms": 1e9}
    feed_minutes(ctx, 20, spike_at=15)
    assert detected(redis_client) == []
    ctx.mon.set_anomaly_tuning("latency_p95_ms", None)
    assert ctx.mon.anomaly_sensitivities() == {}


def test_evaluate_cv_holds_each_folder_out(orch_env, tmp_path):
    data = tmp_path / "data"
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps(labelled(data)))
    args = ("anomaly", "evaluate", str(data), "--labels", str(labels), "--cv")
    report = cli_json(orch_env, *args)
    cv = report["cv"]
    assert [g["group"] for g in cv["groups"]] == ["latency_p95_ms", "throughput"]
    assert cv["in_sample"] == report["total"]
    assert cv["pooled"]["windows"] == 5 and cv["settings"] == 32
    assert all(g["setting"]["sensitivity"] in (1.5, 2.0, 2.5, 3.0) for g in cv["groups"])
    table = cli(orch_env, *args).stdout
    assert "leave one group out" in table and "mean of groups" in table
    only = {"throughput/s0.csv": json.loads(labels.read_text())["throughput/s0.csv"]}
    one = tmp_path / "one.json"
    one.write_text(json.dumps(only))
    args = ("anomaly", "evaluate", str(data), "--labels", str(one), "--cv")
    done = cli(orch_env, *args, check=False)
    assert done.returncode != 0 and "has 1" in done.stderr
