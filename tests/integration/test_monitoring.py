"""The monitoring loops on a real beat, with real workers, Redis and Alertmanager.

Loop intervals are one second here (the ORCH_*_INTERVAL variables), so every loop runs many
times within a test; the synthetic-clock tests of the loop bodies are in
test_monitoring_edges.py.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.exporter import FAMILIES
from orchestrator.config import load_settings
from orchestrator.errors import InvalidTask
from orchestrator.runtime.celeryconf import create_app
from orchestrator.store.keys import EVENTS
from tests.integration.conftest import FAST_LOOPS
from tests.support import CLI, REPO_ROOT, cli, cli_json, free_port, wait_for

pytestmark = pytest.mark.integration

FAST = FAST_LOOPS
LOOPS = {"alerts", "sla", "security", "backup", "anomaly", "optimize"}
AM_CONFIG = """
route:
  receiver: "null"
  group_wait: 0s
receivers:
  - name: "null"
"""
RULES = """
rules:
  - name: NoActiveAgents
    metric: agents_active
    op: "<"
    threshold: 1
    severity: critical
    labels: {team: ops}
    annotations: {summary: "No agent is alive"}
"""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def event_types(redis_client) -> list[str]:
    return [f["type"] for _, f in redis_client.xrange(EVENTS)]


def deliveries(redis_client, loop: str) -> list[dict[str, Any]]:
    runs = [json.loads(x) for x in redis_client.lrange("orch:monitor:runs", 0, -1)]
    return [r for r in runs if r["loop"] == loop]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager (Debian's prometheus-alertmanager) on a free port, no clustering."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (`make sysdeps` installs it)")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(AM_CONFIG)
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200,
            timeout=30,
            ignore=(OSError,),
            message="alertmanager never became ready",
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_loops_on_beat_reach_alertmanager_and_the_cli(
    start_control, start_agent, celery_procs, orch_env, alertmanager, redis_client, client, tmp_path
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    extra = {
        **FAST,
        "ORCH_ALERTMANAGER_URL": alertmanager,
        "ORCH_ALERT_RULES_FILE": str(rules),
        "ORCH_BACKUP_DIR": str(tmp_path / "backups"),
        "ORCH_BACKUP_RETENTION": "2",
        "ORCH_SECURITY_REJECTION_THRESHOLD": "3",
    }
    env = {**orch_env, **extra}
    start_control(**extra)
    celery_procs(["beat", "-l", "info"], env, name="beat")

    def am_alert(name: str) -> list[dict[str, Any]]:
        return [
            a for a in get_json(alertmanager + "/api/v2/alerts") if a["labels"]["alertname"] == name
        ]

    # No agent yet: the (overridden) built-in rule fires and reaches Alertmanager.
    pushed = wait_for(lambda: am_alert("NoActiveAgents"), timeout=40, ignore=(OSError,))
    assert pushed[0]["labels"] == {
        "alertname": "NoActiveAgents",
        "severity": "critical",
        "team": "ops",
    }
    assert pushed[0]["status"]["state"] == "active"
    listed = cli_json(env, "alerts")
    mine = next(a for a in listed if a["name"] == "NoActiveAgents")
    assert set(mine) == {"name", "state", "severity", "value", "since", "labels"}
    assert (mine["state"], mine["severity"], mine["value"]) == ("firing", "critical", 0.0)
    assert "acknowledged NoActiveAgents" in cli(env, "alerts", "ack", "NoActiveAgents").stdout
    assert cli(env, "alerts", "ack", "NoSuchAlert", check=False).returncode == 1

    # An agent arrives: the alert resolves here and in Alertmanager.
    start_agent("a", "echo", **extra)
    wait_for(lambda: not am_alert("NoActiveAgents"), timeout=30, message="alert never resolved")
    assert "alert.resolved" in event_types(redis_client)
    assert all(
        a["name"] != "NoActiveAgents" for a in cli_json(env, "alerts") if a["state"] == "firing"
    )

    results = [client.submit("echo", {"i": i}) for i in range(10)]
    assert [r.get(timeout=30) for r in results] == [{"i": i} for i in range(10)]
    for _ in range(3):
        with pytest.raises(InvalidTask, match="priority"):
            client.submit("echo", {}, priority=99, client_id="bad-svc")
    wait_for(lambda: "security.threat" in event_types(redis_client), timeout=30)
    security = cli_json(env, "security")
    assert [t["client_id"] for t in security["threats"]] == ["bad-svc"]
    assert security["rejections"]["bad-svc"] == 3

    status = cli_json(env, "status")
    assert status["agents_active"] == 1 and status["tasks_succeeded"] == 10
    assert status["error_rate"] == 0.0 and status["latency_p95_ms"] >= 0.0
    assert status["health"] in ("healthy", "degraded", "critical")
    sla = cli_json(env, "sla")
    assert all(
        set(r)
        == {
            "name",
            "sli",
            "objective",
            "value",
            "compliant",
            "error_budget_remaining",
            "burn_rates",
        }
        for r in sla
    )
    success = next(r for r in sla if r["name"] == "task-success")
    assert (
        success["value"] == 1.0
        and success["compliant"]
        and success["error_budget_remaining"] == 1.0
    )

    backups = wait_for(lambda: cli_json(env, "backup", "list"), timeout=20)
    assert 1 <= len(backups) <= 2
    assert set(backups[-1]) == {"path", "sha256", "created_at"}
    assert "ok:" in cli(env, "backup", "verify", backups[-1]["path"]).stdout
    ran = {r["loop"] for r in map(json.loads, redis_client.lrange("orch:monitor:runs", 0, -1))}
    assert ran >= LOOPS
    assert (
        redis_client.llen("orch:metrics:history") > 0 and redis_client.hlen("orch:perf:scores") == 1
    )


def test_two_beats_never_send_a_tick_twice(start_control, celery_procs, orch_env, redis_client):
    """RedBeat: one beat holds the lock and ticks, the other stands by; when the holder dies
    without releasing it, the standby takes over after the lock times out."""
    extra = {**FAST, "ORCH_BACKUP_INTERVAL_HOURS": "1"}
    env = {**orch_env, **extra}
    start_control(**extra)
    beats = [celery_procs(["beat", "-l", "info"], env, name=f"beat{i}") for i in range(2)]
    wait_for(lambda: len(deliveries(redis_client, "alerts")) >= 6, timeout=40)
    senders = [b for b in beats if "Sending due task alert-evaluation" in b.log_text()]
    assert len(senders) == 1, "exactly one beat may tick"
    holder, standby = senders[0], next(b for b in beats if b is not senders[0])

    def within_one_per_interval() -> None:
        ts = sorted(d["ts"] for d in deliveries(redis_client, "alerts"))
        assert len(ts) <= (ts[-1] - ts[0]) / 1.0 + 2, f"more ticks than the schedule allows: {ts}"

    within_one_per_interval()
    before = len(deliveries(redis_client, "alerts"))
    holder.kill()  # no warm shutdown: the lock is not released, it must time out
    standby.wait_for_log("Sending due task alert-evaluation", timeout=30)
    wait_for(lambda: len(deliveries(redis_client, "alerts")) >= before + 4, timeout=30)
    within_one_per_interval()
    assert all(d["ran"] for d in deliveries(redis_client, "alerts"))


def test_exporter_serves_metrics_and_stops_on_ctrl_c(orch_env, redis_client, tmp_path):
    redis_client.hset("orch:counters", mapping={"submitted": 4, "succeeded": 3})
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "exporter", "--port", str(port), "--address", "127.0.0.1"],
            env=orch_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read().decode()

        text = wait_for(scrape, timeout=30, ignore=(OSError,), message=log.read_text)
        assert "orchestrator_up 1.0" in text
        assert 'orchestrator_tasks_total{event="succeeded"} 3.0' in text
        assert 'orchestrator_agents{status="active"} 0.0' in text
        assert 'orchestrator_health{state="critical"} 1.0' in text
        assert "orchestrator_backup_rpo_met 0.0" in text  # no backup yet
        names = {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line and line[0] != "#"
        }
        assert all(n.startswith("orchestrator_") for n in names), names
        # What it serves is what it declares (exporter.FAMILIES: describe(), the docs' reference).
        served = dict(
            line.split(" ")[2:4] for line in text.splitlines() if line.startswith("# TYPE ")
        )
        declared = {
            name + ("_total" if spec.kind == "counter" else ""): spec.kind
            for name, spec in FAMILIES.items()
        }
        assert served == declared
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "exporter stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_anomaly_backtest_and_sla_page_from_the_cli(orch_env, tmp_path):
    rows = ["timestamp,value"] + [f"t{i},{100 + (i % 5)}" for i in range(240)]
    rows += [f"t{i},{400 + i}" for i in range(240, 250)] + [
        f"t{i},{100 + (i % 5)}" for i in range(250, 280)
    ]
    series = tmp_path / "series.csv"
    series.write_text("\n".join(rows) + "\n")
    assert cli_json(orch_env, "anomaly", "backtest", str(series)) == ["t240"]
    assert cli_json(orch_env, "anomaly", "backtest", str(series), "--sensitivity", "1000") == []
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\nt0,1\nt1,oops\n")
    failed = cli(orch_env, "anomaly", "backtest", str(bad), check=False)
    assert failed.returncode == 1 and "line 3" in failed.stderr

    page = tmp_path / "sla.html"
    cli(orch_env, "sla", "--html", str(page))
    text = page.read_text()
    assert text.count("<svg") == 6 and "task-success" in text and "<script" not in text


def minutes(n: int) -> list[str]:
    """NAB-style timestamps, one a minute from 2024-01-01 00:00."""
    start = datetime(2024, 1, 1)
    return [(start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]


def write_series(path: Path, ts: list[str], values: list[float]) -> list[tuple[str, float]]:
    pairs = [(t, float(v)) for t, v in zip(ts, values, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in pairs))
    return pairs


def labelled_dir(root: Path, n: int = 4000) -> tuple[dict[str, list[list[str]]], dict[str, Any]]:
    """Three labelled series of about `n` points and one unlabelled: (windows, points by name)."""
    ts = minutes(n)
    at = [round(n * share) for share in (0.375, 0.55, 0.75, 0.825)]
    # A flat line with a 30-minute jump to 100x its level long after probation: certainly hit.
    spike = [100.0] * n
    spike[at[2] : at[2] + 30] = [10_000.0] * 30
    # Noise with two bursts: its outcome is whatever the backtest says.
    rng = random.Random(9)
    noisy = [50 + rng.gauss(0, 3) for _ in range(n)]
    for start in (at[0], at[3]):
        noisy[start : start + 20] = [v + 40 for v in noisy[start : start + 20]]
    points = {
        "spike.csv": write_series(root / "spike.csv", ts, spike),
        "sub/flat.csv": write_series(root / "sub" / "flat.csv", ts[: n // 2], [7.0] * (n // 2)),
        "noisy.csv": write_series(root / "noisy.csv", ts, noisy),
    }
    write_series(root / "unlabelled.csv", ts[:10], [1.0] * 10)
    windows = {
        "spike.csv": [[ts[at[2]], ts[at[2] + 200]]],
        "sub/flat.csv": [],
        "noisy.csv": [
            [ts[at[0] - 10], ts[at[0] + 100]],
            [ts[at[3] - 10], ts[at[3] + 100]],
            [ts[at[1]], ts[at[1] + 10]],
        ],
    }
    return windows, points


def test_anomaly_evaluate_scores_the_backtest_from_the_cli(orch_env, tmp_path):
    from orchestrator.monitoring.anomaly import backtest
    from orchestrator.monitoring.anomaly_eval import score_series, total

    data = tmp_path / "data"
    windows, points = labelled_dir(data)
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps(windows))

    for sensitivity, env in (
        (2.0, orch_env),  # ORCH_ANOMALY_DETECTION_SENSITIVITY's default
        (3.0, orch_env | {"ORCH_ANOMALY_DETECTION_SENSITIVITY": "3"}),
    ):
        done = cli(env, "anomaly", "evaluate", str(data), "--labels", str(labels), "--json")
        assert "unlabelled.csv" in done.stderr and "ignored" in done.stderr
        report = json.loads(done.stdout)
        expected = [
            score_series(name, [t for t, _ in pts], backtest(pts, sensitivity), windows[name])
            for name, pts in points.items()
        ]
        assert report == {
            "sensitivity": sensitivity,
            "series": [s.model_dump() for s in expected],
            "total": total(expected).model_dump(),
        }
        spike, flat, _ = report["series"]
        assert (spike["windows"], spike["hit"], spike["missed"]) == (1, 1, 0)
        assert (flat["false_flags"], flat["flags"], flat["score"]) == (0, 0, None)
        assert report["total"]["windows"] == 4

    at_1000 = cli_json(
        orch_env, "anomaly", "evaluate", str(data), "--labels", str(labels), "--sensitivity", "1000"
    )
    assert at_1000["sensitivity"] == 1000.0

    # Piped, the table is tab-separated lines: whole series names, a row per line.
    table = cli(orch_env, "anomaly", "evaluate", str(data), "--labels", str(labels)).stdout
    rows = [line.split("\t") for line in table.splitlines()]
    assert ["sub/flat.csv"] in [r[:1] for r in rows] and "false flags" in rows[1]
    total_row = next(r for r in rows if r[0] == "total")
    assert total_row[1] == str(sum(len(p) for p in points.values()))


@pytest.mark.parametrize(
    "case,labels,message",
    [
        ("missing file", {"gone.csv": []}, "gone.csv"),
        ("bad labels", '{\n  "spike.csv": [\n    [1, 2],\n  ]\n}', "windows.json: line 4"),
        ("bad window", {"spike.csv": [["later", "2024-01-01"]]}, "timestamp 'later'"),
        ("bad csv", {"bad.csv": []}, "bad.csv: line 3: value 'oops' is not a number"),
        ("bad timestamp", {"words.csv": []}, "words.csv: point 2: timestamp 'noon'"),
    ],
)
def test_anomaly_evaluate_errors_name_the_file(orch_env, tmp_path, case, labels, message):
    data = tmp_path / "data"
    labelled_dir(data)
    (data / "bad.csv").write_text("timestamp,value\n2024-01-01,1\n2024-01-02,oops\n")
    (data / "words.csv").write_text("timestamp,value\n2024-01-01,1\nnoon,2\n")
    path = tmp_path / "windows.json"
    path.write_text(labels if isinstance(labels, str) else json.dumps(labels))
    done = cli(orch_env, "anomaly", "evaluate", str(data), "--labels", str(path), check=False)
    assert done.returncode == 1, case
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


def test_bench_anomaly_writes_results_beside_the_published(tmp_path):
    data = tmp_path / "data"
    windows, points = labelled_dir(data, n=1000)
    (data / "windows.json").write_text(json.dumps(windows))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept by hand\n")
    bench = [sys.executable, str(REPO_ROOT / "bench" / "bench_anomaly.py"), "--data", str(data)]
    args = [*bench, "--results", str(results), "--sensitivities", "2,4", "--json"]
    for _ in range(2):  # the second run replaces the generated section
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(done.stdout)
    assert report["sensitivity"] == 2.0
    assert [row["sensitivity"] for row in report["sweep"]] == [2.0, 4.0]
    assert report["total"]["points"] == sum(len(p) for p in points.values())
    assert report["us_per_point"] > 0
    assert 0 < report["state_redis_bytes_max"] < 1_000_000
    assert 0 < report["state_heap_bytes_max"] < 1_000_000

    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nkept by hand\n")
    assert text.count("## Anomaly detector on labelled series") == 1
    assert "| Numenta HTM | 55 / 64 | 59 | 80.9 |" in text
    hit, false_flags = report["total"]["hit"], report["total"]["false_flags"]
    assert f"| **this orchestrator (sensitivity 2)** | **{hit} / 4** | **{false_flags}** |" in text
    assert "so they do not compare" in text  # 4 windows here, not the tuning set's 64
    assert "| sub/flat.csv | 500 | 0 | 0 | 0 | 0 | - |" in text
    assert "| 4 | 4 |" in text  # the sweep's row at sensitivity 4
    # Leave one category out: each top-level series is its own group here, "sub" another.
    cv = report["cv"]
    assert cv["settings"] == 32 and len(cv["groups"]) == len(points)
    assert cv["in_sample"] == report["total"] | {"name": "total"}
    assert "### Leave one category out" in text and "mean of the categories" in text
    assert report["cold_start"]["series"] == len(points)

    absent = subprocess.run(
        [*bench[:2], "--data", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert absent.returncode == 0 and "nothing to measure" in absent.stderr


def test_every_handler_run_is_counted_once_in_telemetry(
    start_control, start_agent, client, redis_client
):
    """Successes, permanent failures and failures handed to recovery each count once, with
    their run time; submit-to-start time only for first attempts; a duplicate runs nothing
    and counts nothing."""
    from orchestrator.monitoring.stats import parse_fields
    from orchestrator.store.monitoring import MonitoringStore

    start_control()
    start_agent("a", "echo,flaky,broken", concurrency=2)
    echoes = [client.submit("echo", {"i": i}) for i in range(5)]
    flaky = client.submit("flaky", {"key": "tm", "fail_times": 1})
    broken = client.submit("broken", {})
    assert [r.get(timeout=30) for r in echoes] == [{"i": i} for i in range(5)]
    assert flaky.get(timeout=60) == {"runs": 2}
    with pytest.raises(Exception, match="broken on purpose"):
        broken.get(timeout=30)
    again = client.submit("echo", {"i": 0}, task_id=echoes[0].id)
    assert again.get(timeout=30) == {"i": 0}

    mon = MonitoringStore(redis_client)

    def counted() -> Any:
        return parse_fields(mon.totals())

    wait_for(lambda: counted().of("broken").fail == 1, timeout=20)
    wait_for(lambda: counted().of("flaky").ok == 1, timeout=20)
    stats = counted()
    echo, fl, br = stats.of("echo"), stats.of("flaky"), stats.of("broken")
    assert (echo.ok, echo.fail, echo.rec) == (5, 0, 0)
    assert (fl.ok, fl.fail, fl.rec) == (1, 1, 1)
    assert (br.ok, br.fail, br.rec) == (0, 1, 0)
    # every run has a run time; only first attempts have a submit-to-start time
    assert [sum(s.latency.values()) for s in (echo, fl, br)] == [5, 2, 1]
    assert [sum(s.delegation.values()) for s in (echo, fl, br)] == [5, 1, 1]
    assert echo.lsum > 0 and echo.dsum > 0
    # the minute buckets hold the same runs as the cumulative totals
    window, _ = mon.window(300, time.time())
    assert (window.of("echo").ok, window.of("flaky").rec, window.of("broken").fail) == (5, 1, 1)


def test_housekeeping_sends_no_task_events_and_the_users_work_does(
    start_control, start_agent, celery_procs, orch_env, redis_client, client
):
    """Flower and `celery events` see the users' tasks, not the beat loops, the recovery
    monitor and the sweeps that run every second or two."""
    env = {**orch_env, **FAST, "ORCH_PARKED_SWEEP_INTERVAL_S": "1"}
    start_control(**FAST, ORCH_PARKED_SWEEP_INTERVAL_S="1")
    start_agent("a", "echo")
    app = create_app(load_settings(redis_url=orch_env["ORCH_REDIS_URL"]), with_tasks=False)
    received: dict[str, str] = {}  # task id -> name, from the task-received events
    events: list[str] = []
    task_ids: set[str] = set()  # of every task event

    def note(event: dict[str, Any]) -> None:
        events.append(event["type"])
        if event["type"].startswith("task-"):
            task_ids.add(event["uuid"])
        if event["type"] == "task-received":
            received[event["uuid"]] = event["name"]

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": note})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        listening.start()
        try:
            wait_for(lambda: "worker-heartbeat" in events, timeout=30)  # subscribed
            celery_procs(["beat", "-l", "info"], env, name="beat")
            wait_for(lambda: len(deliveries(redis_client, "alerts")) >= 3, timeout=40)
            done = client.submit("echo", {"x": 1})
            assert done.get(timeout=30) == {"x": 1}
            wait_for(lambda: done.id in received, timeout=10)
            time.sleep(2)  # two more seconds of every loop's ticks
        finally:
            receiver.should_stop = True
            listening.join(10)
    app.close()
    # One task, told under its type; no task event of anything else (loops, submit, sweeps).
    assert received == {done.id: "echo"} and task_ids == {done.id}, (received, task_ids)
    ran = {r["loop"] for r in map(json.loads, redis_client.lrange("orch:monitor:runs", 0, -1))}
    assert {"alerts", "sla", "security"} <= ran  # the housekeeping did run, unseen
