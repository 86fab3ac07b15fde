"""``onml bench``: throughput and latency of the inference job and of its baselines.

Registered in the ``onml`` command as ``onml bench``; also runs on its own as
``python -m clients.bench_cli``. Every mode starts a private Kafka and Redis under
``var/bench`` on their own ports (unless ``--use-running``), publishes a snapshot, runs
the systems under test as child processes and stops everything it started by pid. Results
go to ``benchmarks/results/`` as JSON, markdown and PNG.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from shared.config import ConfigError, load_config

DEFAULT_OUT_DIR = "benchmarks/results"


class NumberList(click.ParamType):
    """A comma-separated list of numbers, such as ``500,1000,2000``."""

    name = "list"

    def __init__(self, kind: type = int, minimum: float | None = None) -> None:
        self.kind = kind
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not text:
            return ()
        try:
            numbers = tuple(self.kind(part) for part in text.split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__} values", param, ctx)
        if self.minimum is not None and any(number < self.minimum for number in numbers):
            self.fail(f"every value in {value!r} must be at least {self.minimum}", param, ctx)
        return numbers


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'fix your set-up' or 'this step failed', printed without a traceback."""
    import redis

    from benchmarks.errors import BenchError
    from clients.kafka_io import KafkaUnavailableError
    from deploy.stack import StackError
    from shared.data import DataError
    from shared.store import SnapshotCorruptError, SnapshotNotFoundError

    return (ConfigError, BenchError, KafkaUnavailableError, StackError, DataError, SnapshotNotFoundError,
            SnapshotCorruptError, redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _user_errors() as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


@click.group("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--use-running", is_flag=True,
              help="Use the Kafka and Redis that the loaded config points at (as started by 'onml stack up') "
                   "instead of starting a private stack under var/bench on ports 29092, 29093 and 26379.")
@click.option("--keep-stack", is_flag=True, help="Leave the private stack running afterwards.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=DEFAULT_OUT_DIR, show_default=True,
              help="Folder for the JSON, markdown and PNG results.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
              help="Inference batch size limit. Default: the config's max_batch_size (256).")
@click.option("--max-batch-wait-ms", type=click.IntRange(min=0), default=None,
              help="Maximum wait of a partial batch before it is served, in ms. Default: the config's "
                   "max_batch_wait_ms (20).")
@click.option("--parallelism", type=click.IntRange(min=1), default=None,
              help="Flink parallelism of the jobs. Default: the config's parallelism (1).")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions of each benchmark topic. Default: the config's topic_partitions (2).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.pass_context
def bench(ctx: click.Context, use_running: bool, keep_stack: bool, out_dir: str, max_batch_size: int | None,
          max_batch_wait_ms: int | None, parallelism: int | None, partitions: int | None, no_progress: bool) -> None:
    """Measure the inference job's throughput and latency, and compare it with baselines.

    Throughput is in requests (or results) per second, latency in milliseconds from a
    request's send time to its result's arrival at the bench. Results are matched to
    requests by id: answered, lost (never answered) and duplicated (answered twice)
    are reported for every run.
    """
    ctx.ensure_object(dict)
    if ctx.obj.get("config") is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            ctx.obj["config"] = load_config()
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
    ctx.obj["bench"] = {
        "use_running": use_running,
        "keep_stack": keep_stack,
        "out_dir": Path(out_dir),
        "progress": not no_progress,
        "overrides": {"max_batch_size": max_batch_size, "max_batch_wait_ms": max_batch_wait_ms,
                      "parallelism": parallelism, "topic_partitions": partitions},
    }


def _context(ctx: click.Context, model: str):
    from benchmarks.modes import bench_context

    options = ctx.obj["bench"]
    return bench_context(ctx.obj["config"], use_running=options["use_running"], keep_stack=options["keep_stack"],
                         model=model, progress=options["progress"], **options["overrides"])


def _parameters(ctx: click.Context) -> dict[str, Any]:
    options = ctx.obj["bench"]
    return {"command": ctx.info_name, **ctx.params,
            "group": {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}}


def _report(paths: list[Path]) -> None:
    click.echo("results written to:")
    for path in paths:
        click.echo(f"  {path}")


_SYSTEM_OPTION = click.option(
    "--system", type=click.Choice(["onml", "per-record-udf", "per-record-onnx", "plain-consumer", "plain-consumer-batch1"]),
    default="onml", show_default=True,
    help="System under test: the inference job; the per-record Flink job with eager torch (the replaced "
         "design) or with ONNX Runtime; or the plain Kafka consumer (batched, or batch 1).")
_MODEL_OPTION = click.option(
    "--model", type=click.Choice(["untrained", "latest"]), default="untrained", show_default=True,
    help="Publish a seeded untrained model (throughput does not depend on the weights) or serve the store's "
         "latest snapshot.")


@bench.command("drain")
@click.option("--requests", type=click.IntRange(min=2), default=300_000, show_default=True,
              help="Requests written to the request topic before the system starts; the first half warm it up.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for all results, start-up included.")
@_SYSTEM_OPTION
@_MODEL_OPTION
@click.pass_context
@_handle_errors
def drain(ctx: click.Context, requests: int, timeout: float, system: str, model: str) -> None:
    """Sustainable throughput: pre-fill N requests, then start the system and time its results.

    The first half of the results warms the system up (the JVMs of the job and the
    broker compile their hot paths for tens of seconds): the rate runs from the last
    warm-up result to the N-th (results/s). The rate over all results and the start-up
    time are reported beside it.
    """
    from benchmarks.modes import drain_mode

    with _context(ctx, model) as context:
        document, paths = drain_mode(context, system, requests, timeout, ctx.obj["bench"]["out_dir"],
                                     _parameters(ctx))
    result = document["result"]
    rate = result["rps"]
    click.echo(f"{system}: {rate:,.0f} results/s" if rate else f"{system}: no rate (fewer than 2 results)")
    click.echo(f"answered {result['answered']}/{result['sent']}, lost {result['lost']}, "
               f"duplicated {result['duplicated']}, start-up {result['startup_s'] or 0:.1f} s, "
               f"peak RSS {result['peak_rss_mb'] or 0:,.0f} MB")
    _report(paths)


@bench.command("rate")
@click.option("--rates", type=NumberList(float, minimum=0.001), default="500,1000,2000", show_default=True,
              help="Offered loads in requests/s, comma-separated, each run open loop.")
@click.option("--duration", type=click.FloatRange(min=1), default=15.0, show_default=True,
              help="Seconds of load at each rate.")
@click.option("--warmup", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds of open-loop load at the highest rate before the measured ones, left out of the "
                   "figures, while the JVMs compile the paths that this load takes (0: none).")
@_SYSTEM_OPTION
@_MODEL_OPTION
@click.pass_context
@_handle_errors
def rate(ctx: click.Context, rates: tuple[float, ...], duration: float, warmup: float, system: str,
         model: str) -> None:
    """Latency under open-loop load: p50, p95, p99 and max (ms) at each fixed request rate.

    The sender keeps its schedule regardless of when results arrive, and latency runs
    from each request's scheduled send time to its result's arrival.
    """
    from benchmarks.modes import rate_mode

    if not rates:
        raise click.BadParameter("give at least one rate", param_hint="--rates")
    with _context(ctx, model) as context:
        document, paths = rate_mode(context, system, rates, duration, ctx.obj["bench"]["out_dir"], _parameters(ctx),
                                    warmup_s=warmup)
    for step in document["result"]["rates"]:
        latency = step["latency_ms"]
        click.echo(f"{step['rate_per_s']:>8,.0f}/s  p50 {latency['p50'] or 0:8.1f} ms  p99 {latency['p99'] or 0:8.1f} ms  "
                   f"answered {step['answered']}/{step['sent']}  lost {step['lost']}  duplicated {step['duplicated']}")
    _report(paths)


@bench.command("lone")
@click.option("--waits", type=NumberList(int, minimum=0), default="0,5,20,50", show_default=True,
              help="max_batch_wait_ms values to try, comma-separated; each starts the job anew.")
@click.option("--count", type=click.IntRange(min=1), default=30, show_default=True,
              help="Lone requests per value.")
@click.option("--spacing-ms", type=click.FloatRange(min=0), default=200.0, show_default=True,
              help="Pause between a result and the next request, in ms.")
@_MODEL_OPTION
@click.pass_context
@_handle_errors
def lone(ctx: click.Context, waits: tuple[int, ...], count: int, spacing_ms: float, model: str) -> None:
    """Lone-request latency (ms) of the inference job for each max_batch_wait_ms.

    One request at a time: the next is sent only after the previous one's result and a
    pause, so no request shares a batch.
    """
    from benchmarks.modes import lone_mode

    if not waits:
        raise click.BadParameter("give at least one wait", param_hint="--waits")
    with _context(ctx, model) as context:
        document, paths = lone_mode(context, waits, count, spacing_ms, ctx.obj["bench"]["out_dir"], _parameters(ctx))
    for result in document["results"]:
        click.echo(f"max_batch_wait_ms {result['max_batch_wait_ms']:>4}: p50 {result['latency_ms']['p50'] or 0:.1f} ms, "
                   f"max {result['latency_ms']['max'] or 0:.1f} ms, answered {result['answered']}/{result['sent']}")
    _report(paths)


@bench.command("sweep")
@click.option("--batch-sizes", type=NumberList(int, minimum=1), default="64,256", show_default=True,
              help="max_batch_size values, comma-separated.")
@click.option("--waits", type=NumberList(int, minimum=0), default="5,20", show_default=True,
              help="max_batch_wait_ms values, comma-separated.")
@click.option("--parallelisms", type=NumberList(int, minimum=1), default="1,2", show_default=True,
              help="Flink parallelism values, comma-separated.")
@click.option("--partition-counts", type=NumberList(int, minimum=1), default="2", show_default=True,
              help="Topic partition counts, comma-separated.")
@click.option("--requests", type=click.IntRange(min=2), default=50_000, show_default=True,
              help="Requests drained for each combination.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds to wait for each drain, start-up included.")
@click.option("--rates", type=NumberList(float, minimum=0.001), default="", show_default=True,
              help="Open-loop rates (requests/s) run on each combination after its drain; none by default.")
@click.option("--rate-duration", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds of load at each rate.")
@_MODEL_OPTION
@click.pass_context
@_handle_errors
def sweep(ctx: click.Context, batch_sizes, waits, parallelisms, partition_counts, requests: int, timeout: float,
          rates, rate_duration: float, model: str) -> None:
    """Drain (results/s) and optional open-loop latency over batch size × wait × parallelism × partitions.

    Each combination starts the inference job anew on fresh topics; the default grid has
    8 combinations.
    """
    from benchmarks.sweep import sweep_grid, sweep_mode

    grid = sweep_grid(batch_sizes, waits, parallelisms, partition_counts)
    if not grid:
        raise click.BadParameter("every list needs at least one value")
    with _context(ctx, model) as context:
        document, paths = sweep_mode(context, grid, requests, timeout, rates, rate_duration,
                                     ctx.obj["bench"]["out_dir"], _parameters(ctx))
    for result in document["results"]:
        settings = result["settings"]
        click.echo(f"batch {settings['max_batch_size']:>4}  wait {settings['max_batch_wait_ms']:>3} ms  "
                   f"parallelism {settings['parallelism']}  partitions {settings['topic_partitions']}: "
                   f"{result['rps'] or 0:>9,.0f} results/s  lost {result['lost']}  duplicated {result['duplicated']}")
    _report(paths)


@bench.command("compare")
@click.option("--requests", type=click.IntRange(min=2), default=300_000, show_default=True,
              help="Requests drained by onml and by each Kafka baseline; the first half of each drain's results "
                   "is its warm-up and is left out of its rate.")
@click.option("--drain-timeout", type=click.FloatRange(min=1), default=240.0, show_default=True,
              help="Seconds to wait for each drain, start-up included. A slower system is rated on the results "
                   "that arrived by then.")
@click.option("--broker-warmup", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="Requests drained through the plain Kafka consumer before any measured drain and left out of "
                   "the figures, so that the broker's JIT compiler is done for every system (0: none).")
@click.option("--train-samples", type=click.IntRange(min=0), default=40_000, show_default=True,
              help="Training samples streamed through the training job (0: skip training, serve an untrained model).")
@click.option("--rate-fractions", type=NumberList(float, minimum=0.001), default="0.25,0.5,0.75", show_default=True,
              help="Open-loop loads as fractions of onml's drain rate; 0.5 is always run.")
@click.option("--rate-duration", type=click.FloatRange(min=1), default=15.0, show_default=True,
              help="Seconds of load at each fraction.")
@click.option("--rate-warmup", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds of open-loop load at half the drain rate before the measured fractions, left out of "
                   "the figures (0: none).")
@click.option("--lone-count", type=click.IntRange(min=0), default=30, show_default=True,
              help="Lone requests sent to onml after the rates.")
@click.option("--onml-batch-sizes", type=NumberList(int, minimum=1), default="16,64", show_default=True,
              help="Further max_batch_size values drained by onml, for the throughput plot.")
@click.option("--ceiling-batch-sizes", type=NumberList(int, minimum=1), default="1,8,32,64,128,256,512",
              show_default=True, help="Batch sizes of the in-process ceiling; max_batch_size is always added.")
@click.option("--http-duration", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="Seconds of HTTP load on the HTTP service.")
@click.option("--http-connections", type=click.IntRange(min=1), default=8, show_default=True,
              help="Concurrent HTTP connections (closed loop).")
@click.option("--http-generator", type=click.Choice(["auto", "wrk", "httpx"]), default="auto", show_default=True,
              help="HTTP load generator: wrk (C, light on CPU), the httpx asyncio fallback, or wrk when installed.")
@click.pass_context
@_handle_errors
def compare(ctx: click.Context, requests: int, drain_timeout: float, broker_warmup: int, train_samples: int,
            rate_fractions,
            rate_duration: float, rate_warmup: float, lone_count: int, onml_batch_sizes, ceiling_batch_sizes, http_duration: float,
            http_connections: int, http_generator: str) -> None:
    """One run, same model and data: onml against the ceiling and three baselines (requests/s).

    Prints one table with the requests/s of onml's inference job (drain), the in-process
    ceiling, a Flink job with one forward pass per record (eager torch, as in the design
    onml replaces, and ONNX Runtime), a plain Kafka consumer service (batch 1 and batched)
    and a FastAPI service, and onml's ratio to each. Below it: p99
    latency at half of onml's rate, lone-request latency, the job's peak RSS and the
    training job's samples/s. With the defaults it took about 6 minutes on 2 cores.
    """
    from benchmarks.compare import CompareOptions, compare_mode

    options = CompareOptions(
        requests=requests, drain_timeout_s=drain_timeout, broker_warmup_requests=broker_warmup,
        train_samples=train_samples,
        rate_fractions=rate_fractions, rate_duration_s=rate_duration, rate_warmup_s=rate_warmup,
        lone_count=lone_count,
        extra_onml_batch_sizes=onml_batch_sizes, ceiling_batch_sizes=ceiling_batch_sizes,
        http_duration_s=http_duration, http_connections=http_connections, http_generator=http_generator,
    )
    with _context(ctx, "none") as context:
        _, paths = compare_mode(context, options, ctx.obj["bench"]["out_dir"], _parameters(ctx))
    _report(paths)


def main() -> None:
    bench(prog_name="onml bench")


if __name__ == "__main__":
    main()
