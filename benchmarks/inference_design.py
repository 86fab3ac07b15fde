"""Compare inference-job designs: backlog drain rate and lone-request latency, variant by variant.

Each run of a variant uses topics, a consumer group and a model key prefix of its own, so
runs never read each other's data:

1. publish a seeded untrained snapshot of the variant's architecture (the weights do not
   change the speed), with or without its ONNX model;
2. fill the request topic with ``--requests`` requests before the job starts;
3. start ``python -m inference_job.job`` with the variant's settings and read the results
   topic: the drain rate is (results - 1) / (last ``result_ts`` - first ``result_ts``),
   so the job's start-up is not counted;
4. send ``--lone`` single requests ``--lone-gap-ms`` apart and time each from send to
   receipt by this client (Kafka both ways included);
5. stop the job by its process group.

The variants take turns for ``--rounds`` rounds, so that their ratios are measured under
the same machine load. Kafka and Redis must be running (``onml stack up``); the config
comes from the usual places (``--config``, ``$ONML_CONFIG``, ``onml.toml``).

    .venv/bin/python -m benchmarks.inference_design --rounds 2 \\
        --variant "thread:python_execution_mode=thread" \\
        --variant "process:python_execution_mode=process" \\
        --variant "weights-only:python_execution_mode=thread,onnx=false"

``onnx=false`` publishes the snapshot without its ONNX model; the job then exports one in
a child process before it serves.

Each run prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from clients.demo import JobProcess
from clients.kafka_io import assign_at_end, make_consumer, make_producer, poll_values
from deploy.stack import create_topics
from shared.config import Config, load_config
from shared.model import build_model
from shared.store import ModelStore
from shared.wire import WireError, decode_result, encode_request, now_ms

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """Parse ``label:key=value,key=value`` into the label and its settings."""
    label, _, settings = text.partition(":")
    if not label:
        raise argparse.ArgumentTypeError(f"invalid variant {text!r}: expected label:key=value,...")
    values = {}
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"invalid setting {item!r} in variant {label!r}: expected key=value")
        values[key.strip()] = value.strip()
    return label, values


def run_config(base: Config, run_id: str, settings: dict[str, str]) -> Config:
    return base.replace(
        request_topic=f"design.{run_id}.requests", result_topic=f"design.{run_id}.results",
        dead_letter_topic=f"design.{run_id}.dead-letter", training_topic=f"design.{run_id}.training",
        consumer_group_prefix=f"design-{run_id}", model_key_prefix=f"design:{run_id}:model",
        var_dir=str(Path(base.var_dir) / "design" / run_id), **settings,
    )


def fill_requests(config: Config, images: np.ndarray, count: int, run_id: str) -> None:
    producer = make_producer(config)
    for index in range(count):
        message = encode_request(f"drain-{run_id}-{index}", images[index % len(images)], 0.0)
        while True:
            try:
                producer.produce(config.request_topic, message)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} requests were still unsent after 60 s")


def measure_drain(consumer, job: JobProcess, run_id: str, count: int, timeout_s: float) -> dict[str, Any]:
    prefix = f"drain-{run_id}-"
    answered: set[str] = set()
    first_ts = last_ts = None
    started = time.monotonic()
    first_seen_s = None
    for value in poll_values(consumer, started + timeout_s):
        try:
            result = decode_result(value)
        except WireError:
            continue
        if not result.id.startswith(prefix):
            continue
        if first_seen_s is None:
            first_seen_s = time.monotonic() - started
        answered.add(result.id)
        first_ts = result.result_ts_ms if first_ts is None else min(first_ts, result.result_ts_ms)
        last_ts = result.result_ts_ms if last_ts is None else max(last_ts, result.result_ts_ms)
        if len(answered) == count or job.exit_code() is not None:
            break
    figures: dict[str, Any] = {"answered": len(answered), "first_result_after_s": first_seen_s}
    if len(answered) > 1 and last_ts > first_ts:
        figures["drain_per_s"] = round((len(answered) - 1) / ((last_ts - first_ts) / 1000.0))
    return figures


def measure_lone(config: Config, consumer, images: np.ndarray, run_id: str, count: int, gap_s: float) -> dict:
    producer = make_producer(config)
    latencies = []
    for index in range(count):
        request_id = f"lone-{run_id}-{index}"
        sent_ms = now_ms()
        producer.produce(config.request_topic, encode_request(request_id, images[index % len(images)], sent_ms))
        producer.flush(5)
        # One message per poll, so the client does not wait to fill a batch of results.
        for value in poll_values(consumer, time.monotonic() + 5.0, batch=1):
            try:
                if decode_result(value).id == request_id:
                    latencies.append(now_ms() - sent_ms)
                    break
            except WireError:
                continue
        time.sleep(gap_s)
    if not latencies:
        return {"lone_answered": 0}
    return {
        "lone_answered": len(latencies),
        "lone_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "lone_p90_ms": round(float(np.percentile(latencies, 90)), 1),
        "lone_max_ms": round(float(max(latencies)), 1),
    }


def run_variant(base: Config, label: str, settings: dict[str, str], args: argparse.Namespace,
                images: np.ndarray) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    settings = dict(settings)
    with_onnx = settings.pop("onnx", "true").lower() != "false"
    config = run_config(base, run_id, settings)
    create_topics(config)

    store = ModelStore.from_config(config)
    model = build_model(config.architecture, seed=config.seed)
    store.publish(model.state_dict(), {"architecture": config.architecture, "samples_seen": 0, "accuracy": None,
                                       "note": "untrained model published by benchmarks.inference_design"},
                  with_onnx=with_onnx)
    fill_requests(config, images, args.requests, run_id)

    consumer = make_consumer(config)
    assign_at_end(consumer, config.result_topic)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ONML_")}
    environment.update(config.to_environ())
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    job = JobProcess(f"design-{run_id}", "inference_job.job", config, environment)
    figures: dict[str, Any] = {"variant": label, "settings": settings, "onnx": with_onnx, "requests": args.requests,
                               "load_average_1m": os.getloadavg()[0]}
    job.start()
    try:
        figures.update(measure_drain(consumer, job, run_id, args.requests, args.timeout))
        if figures["answered"] == args.requests:
            figures.update(measure_lone(config, consumer, images, run_id, args.lone, args.lone_gap_ms / 1000.0))
    finally:
        job.stop()
        consumer.close()
    if figures["answered"] < args.requests:
        figures["log_tail"] = job.log_tail(10)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", type=parse_variant, required=True,
                        help="label:key=value,... with config settings, plus onnx=false to publish weights only")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all variants (default 2)")
    parser.add_argument("--requests", type=int, default=40_000, help="requests in the backlog (default 40000)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the results of the backlog (default 60)")
    parser.add_argument("--lone", type=int, default=40, help="single requests timed after the drain (default 40)")
    parser.add_argument("--lone-gap-ms", type=float, default=150.0,
                        help="pause after each single request, in ms (default 150)")
    parser.add_argument("--config", help="TOML config file (default: $ONML_CONFIG or ./onml.toml)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 2 or args.lone < 0 or args.timeout <= 0:
        parser.error("--rounds must be at least 1, --requests at least 2, --lone 0 or more and --timeout above 0")

    base = load_config(args.config)
    images = np.random.default_rng(0).integers(0, 256, size=(1000, 28, 28), dtype=np.uint8)
    for round_number in range(1, args.rounds + 1):
        for label, settings in args.variant:
            figures = run_variant(base, label, settings, args, images)
            print(json.dumps({"round": round_number, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
