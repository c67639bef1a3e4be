"""Where results go: one JSON document per run, and for a sweep a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sockets = [r["params"]["sockets"] for r in results]
    throughput = [r["decisions_per_s"] for r in results]
    p99 = [r["latency_ms"]["p99"] or 0.0 for r in results]
    figure, left = plt.subplots(figsize=(8, 5), dpi=100)
    left.plot(sockets, throughput, marker="o", color="tab:blue", label="decisions/s")
    left.set_xscale("log")
    left.set_xticks(sockets, [f"{c:,}" for c in sockets])
    left.minorticks_off()
    left.set_xlabel("connected sockets C")
    left.set_ylabel("decisions/s", color="tab:blue")
    right = left.twinx()
    right.plot(sockets, p99, marker="s", color="tab:red", label="p99 latency (ms)")
    right.set_ylabel("p99 latency, ms", color="tab:red")
    known = [(r["params"]["sockets"], original) for r in results if (original := _original(r)) is not None]
    if known:
        at = [c for c, _ in known]
        left.plot(at, [o[0] for _, o in known], "o--", color="tab:blue", alpha=0.45, label="original decisions/s")
        right.plot(at, [o[1] for _, o in known], "s--", color="tab:red", alpha=0.45, label="original p99 (ms)")
        left.set_yscale("log")
        right.set_yscale("log")
    else:
        left.set_ylim(bottom=0)
        right.set_ylim(bottom=0)
    viewers = sorted({r["params"]["viewers"] for r in results})
    left.set_title(f"PlayGate closed loop (V = {', '.join(map(str, viewers))}): throughput and p99 against C")
    left.grid(True, alpha=0.3)
    lines = left.get_lines() + right.get_lines()
    left.legend(
        lines, [str(line.get_label()) for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
