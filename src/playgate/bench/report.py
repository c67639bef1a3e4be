"""Where results go: one JSON document per run, and for a sweep a Markdown table and a PNG chart; and the outside
generator's results (../shared/bench) against the original's, as a table and a chart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

DEFAULT_OUT_DIR = Path("bench/reports")


def run_dir(out_dir: Path, label: str) -> Path:
    """A fresh folder for this invocation's files: <out_dir>/<UTC time>-<label>."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{stamp}-{label}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write one result document (indented, keys in a stable order)."""
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _server_cpu(server: dict[str, Any]) -> str:
    """The server's CPU %, and per role when there are several (api, worker, redis): where the time goes."""
    if not server:
        return "—"
    roles = server.get("by_role") or {}
    if len(roles) <= 1:
        return str(server.get("cpu_percent", "—"))
    parts = ", ".join(f"{role} {roles[role]['cpu_percent']}" for role in sorted(roles))
    return f"{server.get('cpu_percent')} ({parts})"


def summary_line(result: dict[str, Any]) -> str:
    """One line for a terminal: the figures that matter of a load run."""
    params = result["params"]
    latency = result["latency_ms"]
    server = result.get("server") or {}
    sockets = result["sockets"]
    return (
        f"C={params['sockets']} V={params['viewers']} {params['mode']}: "
        f"{result['decisions_per_s']:,.0f} decisions/s, p50 {_ms(latency['p50'])} ms, p99 {_ms(latency['p99'])} ms, "
        f"max {_ms(latency['max'])} ms; http errors {result['http_errors']}, missing {result['missing_decisions']}, "
        f"sockets exact {sockets['exact']}/{sockets['connected']} (failed {sockets['failed']}); "
        f"server cpu % {_server_cpu(server)}, rss {server.get('rss_mb', '—')} MB; "
        f"load cpu {result['load']['cpu_percent']}% lag max {_ms(result['load']['loop_lag_ms_max'])} ms"
        + (" (LOAD SATURATED)" if result["load"]["saturated"] else "")
    )


# The original Node.js service on this kind of machine, same closed loop (issue 6): (C, V) -> (decisions/s, p99 ms).
ORIGINAL = {(10, 10): (1170.0, 10.0), (100, 20): (400.0, 48.0), (1000, 20): (57.0, 295.0), (5000, 20): (10.0, 3600.0)}

TABLE_HEADER = (
    "| C sockets | V viewers | decisions/s | vs original | p50 ms | p90 ms | p99 ms | max ms | HTTP errors | missing | "
    "sockets exact | server CPU % | server RSS MB | load CPU % | load lag max ms |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def _original(result: dict[str, Any]) -> tuple[float, float] | None:
    """The original's (decisions/s, p99 ms) at this run's C and V, when the issue's table has that point."""
    return ORIGINAL.get((result["params"]["sockets"], result["params"]["viewers"]))


def _ratio(result: dict[str, Any]) -> str:
    original = _original(result)
    return "—" if original is None else f"{result['decisions_per_s'] / original[0]:,.2g}x"


def sweep_table(results: Sequence[dict[str, Any]]) -> str:
    """The sweep as a Markdown table, one row per run."""
    rows = []
    for r in results:
        latency, server, sockets = r["latency_ms"], r.get("server") or {}, r["sockets"]
        rows.append(
            f"| {r['params']['sockets']:,} | {r['params']['viewers']} | {r['decisions_per_s']:,.0f} | {_ratio(r)} "
            f"| {_ms(latency['p50'])} | {_ms(latency['p90'])} | {_ms(latency['p99'])} | {_ms(latency['max'])} "
            f"| {r['http_errors']} | {r['missing_decisions']} | {sockets['exact']}/{sockets['connected']} "
            f"| {_server_cpu(server)} | {server.get('rss_mb', '—')} | {r['load']['cpu_percent']} "
            f"| {_ms(r['load']['loop_lag_ms_max'])} |"
        )
    return TABLE_HEADER + "\n".join(rows) + "\n"


def sweep_chart(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Throughput and p99 latency against C, as a PNG (matplotlib, no display needed); where the issue's table
    has the point, the original's figures too (dashed), on log scales so that both fit."""
    lines = [
        Line(
            "",
            [r["params"]["sockets"] for r in results],
            [r["decisions_per_s"] for r in results],
            [r["latency_ms"]["p99"] or 0.0 for r in results],
        )
    ]
    known = [(r["params"]["sockets"], original) for r in results if (original := _original(r)) is not None]
    if known:
        lines.append(Line("original ", [c for c, _ in known], [o[0] for _, o in known], [o[1] for _, o in known], True))
    viewers = sorted({r["params"]["viewers"] for r in results})
    title = f"PlayGate closed loop (V = {', '.join(map(str, viewers))}): throughput and p99 against C"
    return _chart(lines, title, path)


@dataclass(frozen=True)
class Line:
    """One service's figures on a chart: decisions/s and p99 (ms) at each C; `dashed` for the one compared to."""

    label: str
    sockets: list[int]
    throughput: list[float]
    p99_ms: list[float]
    dashed: bool = False


def _chart(lines: Sequence[Line], title: str, path: Path) -> Path:
    """Decisions/s (left axis) and p99 (right axis) against C, one pair of lines per service, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(8, 5), dpi=100)
    right = left.twinx()
    for line in lines:
        style, alpha = ("--", 0.45) if line.dashed else ("-", 1.0)
        left.plot(
            line.sockets, line.throughput, "o" + style, color="tab:blue", alpha=alpha, label=f"{line.label}decisions/s"
        )
        right.plot(line.sockets, line.p99_ms, "s" + style, color="tab:red", alpha=alpha, label=f"{line.label}p99 (ms)")
    sockets = sorted({c for line in lines for c in line.sockets})
    left.set_xscale("log")
    left.set_xticks(sockets, [f"{c:,}" for c in sockets])
    left.minorticks_off()
    left.set_xlabel("connected sockets C")
    left.set_ylabel("decisions/s", color="tab:blue")
    right.set_ylabel("p99 latency, ms", color="tab:red")
    if len(lines) > 1:
        left.set_yscale("log")
        right.set_yscale("log")
    else:
        left.set_ylim(bottom=0)
        right.set_ylim(bottom=0)
    left.set_title(title)
    left.grid(True, alpha=0.3)
    handles = left.get_lines() + right.get_lines()
    left.legend(handles, [str(h.get_label()) for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# The outside generator (../shared/bench, loadgen.js) names the service by its dialect: `seed` is the original's.
ORIGINAL_DIALECT = "seed"


@dataclass
class Point:
    """One (C, V) point of one service in the outside generator's runs: each run's decisions/s and p99 (ms)."""

    throughput: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


Points = dict[tuple[int, int], Point]


def outside_points(documents: Iterable[dict[str, Any]]) -> tuple[Points, Points]:
    """The outside generator's result documents (the JSON line it prints last) grouped by (C, V): PlayGate's runs
    and the original's (`--dialect seed`). A document that is not the generator's raises ValueError."""
    ours: Points = {}
    original: Points = {}
    for document in documents:
        try:
            config, window = document["config"], document["window"]
            point = (int(config["clients"]), int(config["viewers"]))
            throughput = float(window["decisionsPerSec"])
            p99 = float(document["latencyMs"]["decision"]["p99"] or 0.0)
            dialect = document["dialect"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a result of the outside generator (loadgen.js): {exc!r} missing or wrong") from None
        found = (original if dialect == ORIGINAL_DIALECT else ours).setdefault(point, Point())
        found.throughput.append(throughput)
        found.p99_ms.append(p99)
    return ours, original


def _runs(values: Sequence[float], unit: str = "") -> str:
    return ", ".join(f"{v:,.0f}{unit}" if v >= 100 else f"{v:,.1f}{unit}" for v in values) or "—"


def outside_table(ours: Points, original: Points) -> str:
    """PlayGate against the original at each (C, V), as a Markdown table: each run's decisions/s and p99, and the
    ratio of the medians of decisions/s."""
    rows = [
        "| C, V | original decisions/s | PlayGate decisions/s | ratio (medians) | original p99 | PlayGate p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c, v in sorted(set(ours) | set(original)):
        mine, theirs = ours.get((c, v), Point()), original.get((c, v), Point())
        ratio = (
            f"{median(mine.throughput) / median(theirs.throughput):,.2f}x"
            if mine.throughput and theirs.throughput and median(theirs.throughput) > 0
            else "—"
        )
        rows.append(
            f"| {c:,}, {v} | {_runs(theirs.throughput)} | {_runs(mine.throughput)} | {ratio} "
            f"| {_runs(theirs.p99_ms, ' ms')} | {_runs(mine.p99_ms, ' ms')} |"
        )
    return "\n".join(rows) + "\n"


def outside_chart(ours: Points, original: Points, path: Path) -> Path:
    """PlayGate (solid) and the original (dashed) against C: the medians of each point's runs."""

    def line(label: str, points: Points, dashed: bool) -> Line:
        at = sorted(points)
        return Line(
            label,
            [c for c, _ in at],
            [median(points[p].throughput) for p in at],
            [median(points[p].p99_ms) for p in at],
            dashed,
        )

    lines = [line("PlayGate ", ours, False)] + ([line("original ", original, True)] if original else [])
    viewers = sorted({v for _, v in [*ours, *original]})
    title = f"Outside generator, closed loop (V = {', '.join(map(str, viewers))}): PlayGate and the original"
    return _chart(lines, title, path)
