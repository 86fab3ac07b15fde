"""The demo: the local stack, both jobs on mini-clusters, a training stream and rounds of requests.

Each round sends a slice of the held-out digits as requests, reads the answers back
from the results topic by request id and prints accuracy, latency and the model
version that answered, so a person watches the model learn. Ctrl-C stops the streams,
then the jobs, then the stack, each by the pid it was started with.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from shared.config import Config

logger = logging.getLogger(__name__)


class JobProcess:
    """A Flink job on its own mini-cluster, run as a child process in its own process group."""

    def __init__(self, name: str, module: str, config: Config, env: dict[str, str], args: list[str] | None = None):
        self.name = name
        self.log_path = Path(config.var_dir) / "log" / f"{name}-job.log"
        self._command = [sys.executable, "-m", module, *(args or [])]
        self._env = env
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A new session makes the job's pid its process-group id, so stopping it also
            # stops the JVM and Python workers it started, all by that one id.
            self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT,
                                             env=self._env, start_new_session=True)
        logger.info("started %s job (pid %d), log %s", self.name, self._process.pid, self.log_path)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s job (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL",
                           self.name, self._process.pid, timeout_s)
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout_s)
        # The job's JVM may ignore SIGTERM and outlive the Python process that started it.
        # It is still in the group, so end whatever is left of the group.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        logger.info("stopped %s job (pid %d)", self.name, self._process.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _print(line: str) -> None:
    print(line, flush=True)


def _check_jobs(jobs: list[JobProcess]) -> None:
    for job in jobs:
        if job.exit_code() is not None:
            raise RuntimeError(f"the {job.name} job exited with status {job.exit_code()}; "
                               f"last lines of {job.log_path}:\n{job.log_tail()}")


def _wait_until_answering(jobs, store, producer, consumer, config, held_out, timeout_s: float = 300.0) -> None:
    """Block until a snapshot exists and the inference job answers one probe request."""
    from clients.streams import collect_results, send_requests

    _print("waiting for the first snapshot and for the inference job to answer ...")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_jobs(jobs)
        if store.latest_version() is None:
            time.sleep(1.0)
            continue
        probe = send_requests(producer, config, held_out.images[:1], held_out.labels[:1])
        if collect_results(consumer, probe, timeout_s=5.0).results:
            return
    raise RuntimeError(f"the pipeline returned no result for a request within {timeout_s:.0f} s; "
                       f"see {jobs[0].log_path} and {jobs[1].log_path}")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _set_stop_handlers(handler) -> dict | None:
    """Set ``handler`` for SIGINT and SIGTERM; return the previous handlers (None off the main thread)."""
    try:
        return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:
        # signal.signal works only on the main thread, where the demo runs from the CLI.
        return None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_demo(
    config: Config,
    env: dict[str, str],
    *,
    rate: float,
    interval_s: float,
    requests_per_round: int,
    duration_s: float | None,
    target_accuracy: float,
    keep_stack: bool,
    with_app: bool = True,
) -> int:
    """Run the demo until Ctrl-C or ``duration_s``; return the process exit status."""
    from clients.kafka_io import assign_at_end, make_consumer, make_producer
    from clients.streams import collect_results, send_requests, stream_training
    from deploy import stack
    from shared.data import load_split, prepare
    from shared.store import ModelStore

    # 1. Stack and data.
    _print("starting Kafka and Redis ...")
    stack.up(config)
    prepare(config.data_dir, config.dataset)
    train = load_split(config.data_dir, config.dataset, "train")
    held_out = load_split(config.data_dir, config.dataset, "t10k")
    store = ModelStore.from_config(config)
    resumed_from = store.latest_version()
    if resumed_from is not None:
        _print(f"model store already holds version {resumed_from}: training resumes from the last checkpoint")

    # 2. The two jobs, each on its own embedded mini-cluster, and the app.
    jobs = [JobProcess("training", "training_job.job", config, env),
            JobProcess("inference", "inference_job.job", config, env)]
    stop = threading.Event()
    producer_thread: threading.Thread | None = None
    app = None
    interrupted = False
    # SIGTERM (from `timeout`, a service manager or `kill`) stops the demo as Ctrl-C does.
    previous_handlers = _set_stop_handlers(_raise_keyboard_interrupt)
    try:
        if with_app:
            from clients.app import start_app

            try:
                app = start_app(config)
                _print(f"app: open {app.url} to draw digits and watch training")
            except OSError as error:
                _print(f"warning: the app could not start on port {config.app_port} ({error}); "
                       "the demo goes on without it (set ONML_APP_PORT to use another port)")
        for job in jobs:
            job.start()

        # 3. The training stream, on a thread, epoch after epoch until the demo stops.
        def produce() -> None:
            try:
                stream_training(make_producer(config), config, train.images, train.labels, rate_per_s=rate,
                                epochs=10 ** 6, stop=stop.is_set)
            except Exception:
                logger.exception("the training stream stopped with an error")

        producer_thread = threading.Thread(target=produce, name="training-stream", daemon=True)
        producer_thread.start()
        _print(f"streaming {len(train.labels)} training digits per epoch at {rate:.0f}/s; "
               f"every {interval_s:.0f} s {requests_per_round} held-out digits are sent as requests")

        # 4. Rounds of held-out requests, answered through the results topic.
        consumer = make_consumer(config)
        assign_at_end(consumer, config.result_topic)
        request_producer = make_producer(config)
        started = time.monotonic()
        _wait_until_answering(jobs, store, request_producer, consumer, config, held_out)
        _print(f"{'time':>6}  {'version':>7}  {'samples':>8}  {'preq.acc':>8}  {'answered':>9}  "
               f"{'held-out acc':>12}  {'p50 ms':>7}  {'p99 ms':>7}")
        reached = False
        offset = 0
        while duration_s is None or time.monotonic() - started < duration_s:
            _check_jobs(jobs)
            round_started = time.monotonic()
            stop_at = min(offset + requests_per_round, len(held_out.labels))
            sent = send_requests(request_producer, config, held_out.images[offset:stop_at],
                                 held_out.labels[offset:stop_at])
            offset = 0 if stop_at >= len(held_out.labels) else stop_at
            summary = collect_results(consumer, sent, timeout_s=max(interval_s, 30.0)).summary(sent)
            version = max(summary["model_versions"], default=None)
            metadata = store.metadata(version) if version is not None else {}
            elapsed = time.monotonic() - started
            accuracy = summary["accuracy"]
            latency = summary["latency_ms"]
            preq = metadata.get("accuracy")
            _print(f"{elapsed:6.0f}  {version if version is not None else '-':>7}  "
                   f"{metadata.get('samples_seen', 0):>8}  {'-' if preq is None else f'{preq:.2%}':>8}  "
                   f"{summary['answered']:>4}/{summary['sent']:<4}  "
                   f"{'-' if accuracy is None else f'{accuracy:.2%}':>12}  "
                   f"{latency.get('p50', float('nan')):7.1f}  {latency.get('p99', float('nan')):7.1f}")
            if not reached and accuracy is not None and accuracy >= target_accuracy:
                reached = True
                _print(f"held-out accuracy {accuracy:.2%} reached the {target_accuracy:.0%} target "
                       f"{elapsed:.0f} s after the jobs started")
            time.sleep(max(0.0, interval_s - (time.monotonic() - round_started)))
        consumer.close()
        return 0
    except RuntimeError as error:
        _print(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        interrupted = True
        _print("\nstopping the streams, the jobs and the stack ...")
        return 0
    finally:
        # 5. Stop in reverse order: streams, jobs, then the stack. A second Ctrl-C or SIGTERM
        # must not cut this short: the jobs run in process groups of their own, so nothing
        # else would stop them.
        _set_stop_handlers(signal.SIG_IGN)
        try:
            stop.set()
            if producer_thread is not None:
                producer_thread.join(timeout=10)
            if app is not None:
                app.close()
            for job in reversed(jobs):
                job.stop()
            if not keep_stack:
                stack.down(config)
        finally:
            for signum, handler in (previous_handlers or {}).items():
                signal.signal(signum, handler)
        if interrupted:
            _print("stopped; run 'make demo' again to resume from the stored snapshots and checkpoints")
