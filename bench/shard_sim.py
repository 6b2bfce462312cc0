"""How sharding the state store by capability set would spread its work over a Redis Cluster.

    .venv/bin/python bench/shard_sim.py [--nodes 3,6] [--trials 2000] [--json]
    make bench-shard

A simulation of the design in docs/operations/cluster.md, which is not built: each capability
set's keys carry a hash tag of their own, so every Lua step of one task touches one slot, and
one set's work can never be split over nodes. For workloads of K capability sets (equal
shares, or Zipf shares: the r-th set 1/r as busy as the first), it places the sets on N nodes
two ways and reports the busiest node's share of the work, which bounds the cluster: it
carries 1/share times what one node does.

- hashed: the tag is `{cap:<set>}`, the node the one holding its CRC16 slot (slots split
  evenly, as `redis-cli --cluster create` does); set names are random, so the share is a
  distribution over `--trials` draws (mean and 95th percentile);
- assigned: each set gets the tag of a shard chosen for it (largest first onto the least
  busy node), the balance an operator gets by naming shards instead of hashing names.

Tasks/s multiply the busiest share's inverse by the client-routed tasks/s one Redis core
carries, read from bench/results.json (`make bench`) unless `--per-core` gives it. Not in the
model: the relay of per-shard events into `orchestrator:events` (one node's extra work), the
readers that sum counters over shards, agents registered in several shards.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, quantiles

from redis.crc import key_slot

SLOTS = 16384
RESULTS = Path(__file__).with_name("results.json")
SET_COUNTS = (3, 6, 12, 24)


@dataclass(frozen=True)
class Row:
    workload: str  # "equal" or "zipf"
    sets: int
    nodes: int
    placement: str  # "hashed" or "assigned"
    busiest: float  # the busiest node's share of the work (mean over draws when hashed)
    busiest_p95: float  # the same, 95th percentile over draws (= busiest when assigned)

    @property
    def multiple(self) -> float:
        """What the cluster carries, in nodes' worth: 1 / the busiest node's share."""
        return 1.0 / self.busiest


def shares(workload: str, sets: int) -> list[float]:
    """Each capability set's share of the work, largest first."""
    weights = [1.0] * sets if workload == "equal" else [1.0 / r for r in range(1, sets + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def node_of(name: str, nodes: int) -> int:
    """The node holding the slot of the set's tag, slots split evenly over `nodes`."""
    return key_slot(f"{{cap:{name}}}".encode()) * nodes // SLOTS


def busiest_hashed(loads: Sequence[float], names: Sequence[str], nodes: int) -> float:
    per = [0.0] * nodes
    for load, name in zip(loads, names, strict=True):
        per[node_of(name, nodes)] += load
    return max(per)


def busiest_assigned(loads: Sequence[float], nodes: int) -> float:
    """Largest set first onto the least busy node (LPT)."""
    per = [0.0] * nodes
    for load in sorted(loads, reverse=True):
        per[per.index(min(per))] += load
    return max(per)


def simulate(
    nodes: Sequence[int], trials: int, seed: int = 7, set_counts: Sequence[int] = SET_COUNTS
) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for workload in ("equal", "zipf"):
        for sets in set_counts:
            loads = shares(workload, sets)
            for n in nodes:
                draws = []
                for _ in range(trials):
                    names = ["".join(rng.choices(string.ascii_lowercase, k=8)) for _ in loads]
                    draws.append(busiest_hashed(loads, names, n))
                p95 = quantiles(draws, n=20)[-1] if len(draws) > 1 else draws[0]
                rows.append(Row(workload, sets, n, "hashed", mean(draws), p95))
                best = busiest_assigned(loads, n)
                rows.append(Row(workload, sets, n, "assigned", best, best))
    return rows


def per_core_from_results(path: Path = RESULTS) -> float | None:
    """The client-routed tasks/s one Redis core carries, as the last `make bench` measured."""
    try:
        figures = json.loads(path.read_text())["figures"]
    except (OSError, ValueError, KeyError):
        return None
    for figure in figures:
        if figure.get("key") == "redis_cpu":
            found = re.search(r"one core: (\d+)", str(figure.get("measured", "")))
            return float(found.group(1)) if found else None
    return None


def table(rows: Sequence[Row], per_core: float | None) -> str:
    head = (
        "| workload | sets | nodes | placement | busiest node's share (mean; p95) | nodes' worth |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{r.busiest:.2f}" + (f"; {r.busiest_p95:.2f}" if r.placement == "hashed" else "")
        worth = f"{r.multiple:.2f}" + (f" ({r.multiple * per_core:,.0f}/s)" if per_core else "")
        lines.append(f"| {r.workload} | {r.sets} | {r.nodes} | {r.placement} | {share} | {worth} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="3,6", help="cluster sizes, comma-separated (3,6)")
    parser.add_argument("--trials", type=int, default=2000, help="random draws of names (2000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (7)")
    parser.add_argument(
        "--per-core", type=float, help="tasks/s one Redis core carries (from bench/results.json)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        args.nodes = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nodes: whole numbers, comma-separated (got {args.nodes!r})")
    if not args.nodes or min(args.nodes) < 1 or args.trials < 1:
        parser.error("--nodes and --trials must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    per_core = args.per_core or per_core_from_results()
    rows = simulate(args.nodes, args.trials, args.seed)
    if args.json:
        out = {
            "per_core": per_core,
            "rows": [asdict(r) | {"multiple": r.multiple} for r in rows],
        }
        print(json.dumps(out, indent=2))
        return 0
    source = "--per-core" if args.per_core else "bench/results.json"
    said = (
        f"{per_core:,.0f} client-routed tasks/s per Redis core ({source})"
        if per_core
        else ("no per-core figure (run make bench, or give --per-core)")
    )
    print(f"Sharding by capability set, simulated ({args.trials} draws of names; {said}):\n")
    print(table(rows, per_core))
    return 0


if __name__ == "__main__":
    sys.exit(main())
