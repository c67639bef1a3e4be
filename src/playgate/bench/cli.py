"""`playgate bench load | admission | idle | segments | simulate | compare | tokens | floor`: the benchmark commands
(heavy imports inside each)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import uvloop

from playgate.bench.report import DEFAULT_OUT_DIR

if TYPE_CHECKING:
    from playgate.bench.target import Target

_Command = TypeVar("_Command", bound=Callable[..., None])


def _cpus(_ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[int] | None:
    from playgate.bench.target import parse_cpus

    try:
        cpus = parse_cpus(value)
    except ValueError:
        raise click.BadParameter("a CPU list such as 0, 0,1 or 2-3", param=param) from None
    return frozenset(cpus) if cpus is not None else None


def _exit_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does, so that the servers the bench started are stopped too."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))


_OUT = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT_DIR, show_default=True
)
# The throwaway Redis Cluster's primaries (`bench admission --ledger redis-cluster`, `bench simulate`).
_SHARDS = click.option(
    "--shards",
    type=click.IntRange(3, 16),
    default=3,
    show_default=True,
    help="Primaries of the throwaway cluster (redis-cli --cluster create makes no fewer than 3).",
)


def _placement(server_help: str, load_help: str) -> Callable[[_Command], _Command]:
    """The options --server-cpu and --load-cpu (CPU pinning of the servers started and of the load) and --out."""

    def apply(command: _Command) -> _Command:
        return click.option("--server-cpu", callback=_cpus, help=server_help)(
            click.option("--load-cpu", callback=_cpus, help=load_help)(_OUT(command))
        )

    return apply


@contextlib.contextmanager
def _started(start: Callable[[], Target]) -> Iterator[Target]:
    """The target `start` gives, stopped at the end: a BenchError is the command's error, with the server's log
    once it has started."""
    from playgate.bench.target import BenchError

    try:
        target = start()
    except BenchError as exc:
        raise click.ClickException(exc.detail) from None
    try:
        yield target
    except BenchError as exc:
        raise click.ClickException(f"{exc.detail}\n{target.server_log()}") from None
    finally:
        target.stop()


@click.group()
def bench() -> None:
    """Benchmarks: end-to-end load over HTTP and Socket.IO, the admission path alone, idle sockets, HLS segments,
    token checks, and the floor (the players' loop served with nothing but the wire).

    Each run writes one JSON result under --out (default bench/reports/) and prints a summary line.
    """


@dataclass
class _Bars:
    """Progress bars on stderr: sockets connecting, then the measured window."""

    bar: Any
    label: str
    connect_task: Any = None
    run_task: Any = None

    def connecting(self, done: int, total: int) -> None:
        if self.connect_task is None:
            self.connect_task = self.bar.add_task(f"{self.label} connecting", total=total, rate="")
        self.bar.update(self.connect_task, completed=done, rate=f"{done:,}/{total:,} sockets")

    def measuring(self, elapsed_s: float, window_s: float, decisions: int) -> None:
        if self.run_task is None:
            self.run_task = self.bar.add_task(f"{self.label} measuring", total=1.0, rate="")
        rate = decisions / elapsed_s if elapsed_s > 0 else 0.0
        self.bar.update(
            self.run_task, completed=min(1.0, elapsed_s / window_s), rate=f"{decisions:,} decisions, {rate:,.0f}/s"
        )


@contextlib.contextmanager
def _progress(label: str) -> Iterator[_Bars]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield _Bars(bar, label)


@bench.command()
@click.option(
    "--deployment",
    type=click.Choice(["embedded", "distributed"]),
    default="embedded",
    show_default=True,
    help="What the bench starts: `playgate serve`, or --apis x `playgate api` + --workers x `playgate worker` "
    "on a throwaway redis-server (or --redis-url) and a shared SQLite catalogue.",
)
@click.option("--apis", type=click.IntRange(1, 16), default=2, show_default=True, help="Distributed: API processes.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="Distributed: workers.")
@click.option("--redis-url", help="Distributed: this Redis instead of a throwaway redis-server.")
@click.option("--url", multiple=True, help="Drive this running PlayGate (repeat for several APIs) instead.")
@click.option("--admin-password", envvar="PLAYGATE_ADMIN_PASSWORD", help="Admin of --url, to create the users.")
@click.option("--server-pid", type=int, multiple=True, help="Pids of the --url deployment, to sample CPU and RSS.")
@click.option(
    "-c",
    "--sockets",
    type=click.IntRange(1, 100_000),
    default=10,
    show_default=True,
    help="Connected Socket.IO sockets C (viewers' included).",
)
@click.option(
    "-v",
    "--viewers",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Viewers V in a closed loop: request, decision on the socket, stop if allowed, repeat.",
)
@click.option(
    "--idle-users",
    type=click.IntRange(1, 100_000),
    help="Users the C - V idle sockets belong to [default: one per socket, at most 100].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Open loop: this many requests/s in all, whatever the answers (instead of the closed loop).",
)
@click.option(
    "-d", "--duration", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True, help="Measured seconds."
)
@click.option(
    "-w",
    "--warmup",
    type=click.FloatRange(0, 600),
    default=2.0,
    show_default=True,
    help="Seconds of load before measuring.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Load processes; sockets and viewers are spread over them.",
)
@click.option(
    "--sweep",
    help="Run once per point, C or C:V, e.g. 10:10,100:20,1000:20,5000:20; writes sweep.md and sweep.png too.",
)
@_placement(
    "Pin the server processes the bench starts to these CPUs (e.g. 0).",
    "Pin the load processes to these CPUs (e.g. 1).",
)
def load(
    deployment: str,
    apis: int,
    workers: int,
    redis_url: str | None,
    url: tuple[str, ...],
    admin_password: str | None,
    server_pid: tuple[int, ...],
    sockets: int,
    viewers: int,
    idle_users: int | None,
    rate: float | None,
    duration: float,
    warmup: float,
    processes: int,
    server_cpu: frozenset[int] | None,
    load_cpu: frozenset[int] | None,
    sweep: str | None,
    out: Path,
) -> None:
    """End to end over real HTTP and Socket.IO: decisions/s, latency, errors, per-socket accounting."""
    _exit_on_sigterm()
    from playgate.bench.load import LoadSpec, run_load, sweep_points
    from playgate.bench.report import run_dir, summary_line, sweep_chart, sweep_table, write_json
    from playgate.bench.target import BenchError, Target

    try:
        points = sweep_points(sweep, viewers) if sweep else [(sockets, viewers)]
    except BenchError as exc:
        raise click.ClickException(exc.detail) from None

    def start() -> Target:
        if url:
            return Target.running(list(url), admin_password=admin_password, server_pids=list(server_pid))
        if deployment == "distributed":
            return Target.distributed(apis=apis, workers=workers, server_cpus=server_cpu, redis_url=redis_url)
        return Target.embedded(server_cpus=server_cpu)

    results = []
    with _started(start) as target:
        folder = run_dir(out, f"{target.deployment}-" + ("sweep" if sweep else f"load-c{sockets}-v{viewers}"))
        for point_sockets, point_viewers in points:
            spec = LoadSpec(
                sockets=point_sockets,
                viewers=point_viewers,
                duration_s=duration,
                warmup_s=warmup,
                idle_users=idle_users,
                rate_per_s=rate,
                processes=processes,
                load_cpus=load_cpu,
            )
            with _progress(f"C={point_sockets:,} V={point_viewers}") as bars:
                result = run_load(target, spec, bars.measuring, bars.connecting)
            result["command"] = ["playgate", *sys.argv[1:]]
            result["server_cpus"] = sorted(server_cpu) if server_cpu else None
            path = write_json(folder / f"load-c{point_sockets}-v{point_viewers}.json", result)
            click.echo(summary_line(result))
            click.echo(f"  → {path}")
            results.append(result)
    if sweep:
        (folder / "sweep.md").write_text(sweep_table(results))
        chart = sweep_chart(results, folder / "sweep.png")
        write_json(folder / "sweep.json", {"tool": "playgate bench load --sweep", "runs": results})
        click.echo(sweep_table(results))
        click.echo(f"table {folder / 'sweep.md'}, chart {chart}")


def _batch_sizes(_ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("comma-separated whole numbers, e.g. 1,16,256", param=param) from None
    if not sizes or min(sizes) < 1 or max(sizes) > 10_000:
        raise click.BadParameter("each batch size between 1 and 10000", param=param)
    return sizes


@bench.command()
@click.option("--ledger", type=click.Choice(["sqlite", "redis", "redis-cluster"]), default="sqlite", show_default=True)
@click.option(
    "--redis-url",
    help="Redis for --ledger redis (redis+cluster:// for redis-cluster) [flushed before and after each batch size!; "
    "default: throwaway redis-servers here].",
)
@_SHARDS
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes sharing users and requests (Redis ledgers only).",
)
@click.option(
    "--batch-sizes",
    callback=_batch_sizes,
    default="1,4,16,64,256,1024",
    show_default=True,
    help="Worker batch sizes to time.",
)
@click.option(
    "-n",
    "--requests",
    type=click.IntRange(1, 10_000_000),
    default=5000,
    show_default=True,
    help="Decisions per batch size.",
)
@click.option("--users", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option(
    "--policy",
    type=click.Choice(["total", "every-rule"]),
    default="total",
    show_default=True,
    help="The users' plan: the total limit only, or every rule (kinds, title, devices, household) and a shadow.",
)
@_OUT
def admission(
    ledger: str,
    redis_url: str | None,
    shards: int,
    workers: int,
    batch_sizes: tuple[int, ...],
    requests: int,
    users: int,
    policy: str,
    out: Path,
) -> None:
    """The worker and the ledger alone (no HTTP, no sockets): decisions/s by batch size."""

    from playgate.bench.admission import AdmissionSpec, run_admission
    from playgate.bench.report import run_dir, write_json
    from playgate.bench.target import BenchError

    if workers > 1 and ledger == "sqlite":
        raise click.BadParameter("several worker processes need a Redis ledger", param_hint="--workers")
    spec = AdmissionSpec(
        batch_sizes=batch_sizes,
        requests=requests,
        users=users,
        ledger=ledger,
        redis_url=redis_url,
        shards=shards,
        workers=workers,
        policy=policy,
    )
    try:
        result = uvloop.run(run_admission(spec))  # the worker's own event loop (`playgate worker`)
    except BenchError as exc:
        raise click.ClickException(exc.detail) from None
    result["command"] = ["playgate", *sys.argv[1:]]
    path = write_json(run_dir(out, f"admission-{ledger}-{policy}") / "admission.json", result)
    for run in result["runs"]:
        extra = ""
        if run.get("redis_bytes_per_active_stream") is not None:
            extra = (
                f", Redis {run['redis_bytes_per_active_stream']:,.0f} B per active stream "
                f"({run['active_streams']} active; the {run['redis_decisions_kept']} kept decisions and the "
                f"change log's {run['redis_change_log_entries']} entries not counted)"
            )
        if run.get("redis_cpu_us_per_decision") is not None:
            extra += (
                f"; CPU per decision: workers {run['worker_cpu_us_per_decision']:,.0f} µs, "
                f"Redis {run['redis_cpu_us_per_decision']:,.0f} µs"
            )
        click.echo(
            f"{ledger} {policy} batch {run['batch_size']:>5}: {run['decisions_per_s']:>10,.0f} decisions/s, "
            f"{run['ms_per_batch']:.2f} ms/batch ({run['allowed']} allowed, {run['denied']} denied){extra}"
        )
    click.echo(f"  → {path}")


@bench.command()
@click.option("--url", help="Check this running PlayGate (give --server-pid) instead of starting one.")
@click.option("--admin-password", envvar="PLAYGATE_ADMIN_PASSWORD", help="Admin of --url, to create the users.")
@click.option("--server-pid", type=int, help="Pid of the --url server, whose RSS is read.")
@click.option("-c", "--sockets", type=click.IntRange(1, 100_000), default=10_000, show_default=True)
@click.option(
    "--idle-users", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Users the sockets belong to."
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Load processes holding the sockets.",
)
@click.option(
    "--hold",
    type=click.FloatRange(0.5, 600),
    default=5.0,
    show_default=True,
    help="Seconds to hold every socket before reading the RSS.",
)
@_placement("Pin the server the bench starts to these CPUs.", "Pin the load processes to these CPUs.")
def idle(
    url: str | None,
    admin_password: str | None,
    server_pid: int | None,
    sockets: int,
    idle_users: int,
    processes: int,
    hold: float,
    server_cpu: frozenset[int] | None,
    load_cpu: frozenset[int] | None,
    out: Path,
) -> None:
    """C idle Socket.IO connections on one API process: the server's RSS per idle socket."""
    _exit_on_sigterm()
    from playgate.bench.load import run_idle
    from playgate.bench.report import run_dir, write_json
    from playgate.bench.target import Target

    def start() -> Target:
        if url:
            return Target.running([url], admin_password=admin_password, server_pids=[server_pid] if server_pid else [])
        return Target.embedded(server_cpus=server_cpu)

    with _started(start) as target, _progress(f"C={sockets:,} idle") as bars:
        result = run_idle(
            target,
            connecting=bars.connecting,
            sockets=sockets,
            idle_users=idle_users,
            processes=processes,
            hold_s=hold,
            load_cpus=load_cpu,
        )
    result["command"] = ["playgate", *sys.argv[1:]]
    path = write_json(run_dir(out, f"idle-c{sockets}") / "idle.json", result)
    click.echo(
        f"{result['connected']:,}/{sockets:,} idle sockets held: server RSS {result['server_rss_before_mb']} MB → "
        f"{result['server_rss_held_mb']} MB, {result['server_rss_per_socket_kb']} KB per socket; "
        f"messages on idle sockets {result['messages_on_idle_sockets']}"
    )
    click.echo(f"  → {path}")


@bench.command()
@click.option("--mode", type=click.Choice(["serve", "authorize", "both"]), default="both", show_default=True,
              help="`serve`: PlayGate serves each segment's bytes; `authorize`: /v1/authorize alone (nginx's "
              "auth_request, uncached); `both`: one run each.")  # fmt: skip
@click.option("-n", "--players", type=click.IntRange(1, 20_000), default=1000, show_default=True)
@click.option(
    "--interval", type=click.FloatRange(0.1, 60), default=2.0, show_default=True, help="Seconds between segments."
)
@click.option("-d", "--duration", type=click.FloatRange(1, 3600), default=20.0, show_default=True)
@click.option("-w", "--warmup", type=click.FloatRange(0, 600), default=4.0, show_default=True)
@click.option("--rendition", type=click.IntRange(0, 1), default=0, show_default=True, help="0: 320x180, 1: 160x90.")
@_placement(
    "Pin the server the bench starts to these CPUs (e.g. 0).", "Pin the load (this process) to these CPUs (e.g. 1)."
)
def segments(
    mode: str,
    players: int,
    interval: float,
    duration: float,
    warmup: float,
    rendition: int,
    server_cpu: frozenset[int] | None,
    load_cpu: frozenset[int] | None,
    out: Path,
) -> None:
    """Live-like HLS load: P players, one 2 s segment each every 2 s, through the gate: requests/s, p99, CPU."""
    _exit_on_sigterm()
    from playgate.bench.report import run_dir, write_json
    from playgate.bench.segments import SegmentSpec, run_segments, summary
    from playgate.bench.target import Target

    folder = run_dir(out, f"segments-p{players}")
    for one_mode in ("serve", "authorize") if mode == "both" else (mode,):
        spec = SegmentSpec(
            players=players,
            interval_s=interval,
            duration_s=duration,
            warmup_s=warmup,
            mode=one_mode,
            rendition=rendition,
            load_cpus=load_cpu,
        )
        with _started(lambda: Target.embedded(server_cpus=server_cpu)) as target:
            result = run_segments(target, spec, lambda line: click.echo(line, err=True))
        result["command"] = ["playgate", *sys.argv[1:]]
        result["server_cpus"] = sorted(server_cpu) if server_cpu else None
        path = write_json(folder / f"segments-{one_mode}.json", result)
        click.echo(summary(result))
        click.echo(f"  → {path}")


@bench.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the chart to this PNG.")
def compare(results: tuple[Path, ...], chart: Path | None) -> None:
    """PlayGate against the original, from the outside generator's results (../shared/bench: loadgen.js's stdout,
    whose last line is the run's JSON; `--dialect seed` runs are the original's): a Markdown table of each (C, V),
    each run's decisions/s and p99 and the ratio of the medians, and with --chart a PNG of both against C."""
    import json

    from playgate.bench.report import outside_chart, outside_points, outside_table

    documents = []
    for path in results:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
        if not lines:
            raise click.BadParameter(f"{path}: no JSON line (the generator's stdout is expected)", param_hint="RESULTS")
        try:
            documents.append(json.loads(lines[-1]))
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"{path}: its last JSON line does not parse: {exc}", param_hint="RESULTS"
            ) from None
    try:
        ours, original = outside_points(documents)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RESULTS") from None
    click.echo(outside_table(ours, original), nl=False)
    if chart is not None:
        click.echo(f"chart: {outside_chart(ours, original, chart)}")


@bench.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=18320, show_default=True)
def floor(host: str, port: int) -> None:
    """Serve the outside generator's loop (the playgate dialect: request, the decision on the socket, stop) with
    nothing but the wire: uvloop, httptools, a hand-written WebSocket, a count per user in memory; no ledger, no
    signature check, no audit. Not a service: the floor of Python on this stack, to drive with ../shared/bench
    (or `bench load --url`) and read PlayGate's own cost against (README, Performance). Ctrl-C or SIGTERM stops
    it."""
    import asyncio

    from playgate.bench.floor import serve

    async def until_stopped() -> None:
        """Serve until SIGTERM or SIGINT (the loop's own handlers: they cancel the serving task)."""
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(host, port)

    click.echo(f"floor server on http://{host}:{port} (keeps nothing, checks nothing)")
    uvloop.run(until_stopped())


@bench.command()
@click.option("--count", type=click.IntRange(100, 1_000_000), default=5000, show_default=True, help="Tokens each.")
@click.option("--cpu", type=click.IntRange(0, 1023), help="Pin this process to one CPU (e.g. 0).")
def tokens(count: int, cpu: int | None) -> None:
    """Checks of the platform's tokens (RS256, ES256, EdDSA) per second on one core, with a cached key set."""
    import os

    from playgate.bench.tokens import measure

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    for figures in uvloop.run(measure(count)):
        click.echo(figures.line())


@bench.command()
@click.option("--users", type=click.IntRange(1, 100_000_000), default=1_000_000, show_default=True)
@click.option("--virtual-s", type=click.IntRange(3, 86_400), default=180, show_default=True, help="Simulated seconds.")
@click.option("--base-rate", type=click.IntRange(0, 1_000_000), default=200, show_default=True, help="Plays/s.")
@click.option(
    "--surge-rate",
    type=click.IntRange(0, 1_000_000),
    default=800,
    show_default=True,
    help="Plays/s in the middle third (prime time).",
)
@_SHARDS
@click.option("--redis-url", help="A Redis (Cluster) to use instead of a throwaway cluster [flushed first and last!].")
@click.option(
    "--device-ids",
    type=click.Choice(["issued", "short"]),
    default="issued",
    show_default=True,
    help="Device ids as long as those the server issues (61 characters), or short ones (d0..d3).",
)
@_OUT
def simulate(
    users: int,
    virtual_s: int,
    base_rate: int,
    surge_rate: int,
    shards: int,
    redis_url: str | None,
    device_ids: str,
    out: Path,
) -> None:
    """A prime-time evening on the admission path (no HTTP) against a Redis Cluster of real redis-servers:
    plays, heartbeats, stops and vanished players of `--users` users, in simulated time."""

    from playgate.bench.report import run_dir, write_json
    from playgate.bench.simulate import SimulationSpec, run_simulation
    from playgate.bench.target import BenchError

    spec = SimulationSpec(
        users=users,
        virtual_s=virtual_s,
        base_plays_per_s=base_rate,
        surge_plays_per_s=surge_rate,
        shards=shards,
        redis_url=redis_url,
        device_ids=device_ids,
    )
    try:
        result = uvloop.run(run_simulation(spec))
    except BenchError as exc:
        raise click.ClickException(exc.detail) from None
    result["command"] = ["playgate", *sys.argv[1:]]
    path = write_json(run_dir(out, "simulate") / "simulate.json", result)
    r = result
    click.echo(
        f"{r['decisions']:,} decisions ({r['decisions_per_s']:,.0f}/s, batch p99 {r['batch_p99_ms']} ms), "
        f"{r['heartbeats']:,} heartbeats ({r['heartbeats_per_s']:,.0f}/s, p99 {r['heartbeat_p99_ms']} ms), "
        f"{result['stops']:,} stops, {result['expired']:,} expired; {result['active_streams']:,} active streams, "
        f"{result['bytes_per_active_stream']} B each; memory per shard {result['used_memory_bytes_per_shard']}"
    )
    click.echo(f"  → {path}")
