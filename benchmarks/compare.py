"""Compare: onml's inference job against its baselines, in one run, on the same model and data.

Steps, in order:

1. training: N samples through the training job, whose last snapshot then serves every
   later step (or a seeded untrained model when N is 0);
2. ceiling: the raw batched forward pass in this process;
3. broker warm-up: an unmeasured drain through the plain Kafka consumer, so that every
   measured drain meets a broker whose JIT compiler has done its work;
4. onml: drain at the configured settings, then open-loop rates at fractions of the
   drained rate (the half-load p99 among them) and lone requests, on the same job;
   further drains at other max batch sizes for the throughput plot;
5. the per-record Flink job (eager torch, as in the design onml replaces, and ONNX
   Runtime), the plain Kafka consumer (batch 1 and batched) and the HTTP service.

A step that fails is recorded with its error and the run goes on, so one broken
baseline does not cost the other figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks import report, stats
from benchmarks.ceiling import ceiling_at, measure_ceiling
from benchmarks.drain import run_drain
from benchmarks.harness import (
    ONML_JOB,
    PER_RECORD_JOB,
    PER_RECORD_ONNX_JOB,
    BenchContext,
    plain_consumer_spec,
    publish_untrained_snapshot,
)
from benchmarks.http_bench import run_http_baseline
from benchmarks.modes import base_document, finish
from benchmarks.rate import measure_lone, measure_rate
from benchmarks.training import TARGET_ACCURACY, run_training

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareOptions:
    """The sizes of a compare run; the defaults took about 6 minutes on 2 cores (354 s in one run)."""

    requests: int = 300_000
    drain_timeout_s: float = 240.0
    broker_warmup_requests: int = 1_000_000
    train_samples: int = 40_000
    train_timeout_s: float = 300.0
    ceiling_batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512)
    ceiling_seconds: float = 2.0
    extra_onml_batch_sizes: tuple[int, ...] = (16, 64)
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    rate_duration_s: float = 15.0
    rate_warmup_s: float = 10.0
    lone_count: int = 30
    lone_spacing_ms: float = 200.0
    http_duration_s: float = 20.0
    http_connections: int = 8
    http_generator: str = "auto"


def _step(number: int, total: int, title: str, started: float) -> None:
    print(f"\n[{number}/{total}] {title}  (elapsed {time.monotonic() - started:.0f} s)", flush=True)


def _guarded(name: str, errors: dict[str, str], action: Callable[[], Any]) -> Any:
    """Run one step; on failure log it, record the error under ``name`` and return None."""
    try:
        return action()
    except Exception as error:  # one failed baseline must not lose the other figures
        logger.exception("compare step %s failed", name)
        errors[name] = f"{type(error).__name__}: {error}"
        return None


def compare_mode(context: BenchContext, options: CompareOptions, out_dir: Path,
                 parameters: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    started = time.monotonic()
    config = context.config
    errors: dict[str, str] = {}
    total = 8

    # 1. Training, whose last snapshot is the model every later step serves.
    _step(1, total, f"training job: {options.train_samples:,} samples", started)
    training = None
    if options.train_samples > 0:
        training = _guarded("training", errors, lambda: run_training(context, options.train_samples,
                                                                     options.train_timeout_s))
    if training is None or not training.get("snapshots"):
        print("serving a seeded untrained model (no training snapshot)", flush=True)
        publish_untrained_snapshot(context.store, config)
    document = base_document("compare", context, parameters)

    # 2. Ceiling: the same model in this process, no Kafka, no Flink.
    _step(2, total, "ceiling: batched forward pass in one process", started)

    def ceiling_rows():
        from inference_job.predictor import load_model

        sizes = sorted(set(options.ceiling_batch_sizes) | {config.max_batch_size})
        return measure_ceiling(load_model(context.store), context.images, sizes, options.ceiling_seconds,
                               progress=context.progress)

    ceiling = _guarded("ceiling", errors, ceiling_rows) or []

    # The broker's JVM compiles its produce and fetch paths under the first heavy traffic.
    # Without this unmeasured drain, onml's drain came first and met a colder broker than
    # the baselines after it. It drained 33k requests/s at max batch 256, and later drains
    # in the same run reached 53k at max batch 16 and 55k at 64.
    broker_warmup = None
    if options.broker_warmup_requests:
        _step(3, total, f"broker warm-up: plain Kafka consumer drains {options.broker_warmup_requests:,} requests "
                        "(not measured)", started)
        broker_warmup = _guarded("broker-warmup", errors, lambda: run_drain(
            context, plain_consumer_spec(config.max_batch_size, config.max_batch_wait_ms), "broker-warmup",
            options.broker_warmup_requests, options.drain_timeout_s))

    # 3. onml: drain, then rates and lone requests on the same warm job.
    _step(4, total, f"onml inference job: drain {options.requests:,} requests, then open-loop rates and "
                    f"{options.lone_count} lone requests", started)

    def after_drain(run_config, system, drain):
        rates = []
        warmup = None
        if drain.get("rps") and options.rate_warmup_s > 0:
            # The drain ran only full batches; this load also compiles the paths of partial ones.
            warmup = measure_rate(context, run_config, system, 0.5 * drain["rps"], options.rate_warmup_s)
        if drain.get("rps"):
            for fraction in sorted(set(options.rate_fractions) | {0.5}):
                rate = fraction * drain["rps"]
                step = measure_rate(context, run_config, system, rate, options.rate_duration_s)
                rates.append({"fraction_of_drain_rps": fraction, **step})
        lone = (measure_lone(context, run_config, system, options.lone_count, options.lone_spacing_ms)
                if options.lone_count else None)
        return {"rate_warmup": warmup, "rates": rates, "lone": lone}

    onml = _guarded("onml", errors, lambda: run_drain(context, ONML_JOB, "onml", options.requests,
                                                      options.drain_timeout_s, then=after_drain))

    _step(5, total, f"onml inference job at other max batch sizes {list(options.extra_onml_batch_sizes)}", started)
    onml_by_batch = []
    for batch_size in options.extra_onml_batch_sizes:
        if batch_size == config.max_batch_size:
            continue
        result = _guarded(f"onml-batch{batch_size}", errors, lambda size=batch_size: run_drain(
            context, ONML_JOB, f"onml-b{size}", options.requests, options.drain_timeout_s, max_batch_size=size))
        if result is not None:
            onml_by_batch.append(result)

    # 4. Kafka baselines.
    _step(6, total, f"per-record Flink job, eager torch then ONNX Runtime: drain {options.requests:,} requests",
          started)
    per_record = _guarded("per-record-udf", errors, lambda: run_drain(
        context, PER_RECORD_JOB, "per-record", options.requests, options.drain_timeout_s))
    per_record_onnx = _guarded("per-record-onnx", errors, lambda: run_drain(
        context, PER_RECORD_ONNX_JOB, "per-record-onnx", options.requests, options.drain_timeout_s))

    _step(7, total, "plain Kafka consumer service, batch 1 and batched", started)
    plain_batch1 = _guarded("plain-consumer-batch1", errors, lambda: run_drain(
        context, plain_consumer_spec(1, config.max_batch_wait_ms), "plain-b1", options.requests,
        options.drain_timeout_s))
    plain_batched = _guarded("plain-consumer", errors, lambda: run_drain(
        context, plain_consumer_spec(config.max_batch_size, config.max_batch_wait_ms), "plain-batched",
        options.requests, options.drain_timeout_s))

    # 5. HTTP baseline.
    _step(8, total, "HTTP service (FastAPI + uvicorn) under an HTTP load generator", started)
    http = _guarded("http-service", errors, lambda: run_http_baseline(
        context, options.http_duration_s, options.http_connections, generator=options.http_generator))

    summary = summarize_compare(document["environment"], config.max_batch_size, config.max_batch_wait_ms,
                                onml, ceiling, per_record, per_record_onnx, plain_batch1, plain_batched, http,
                                training)
    document.update(summary)
    document["details"] = {
        "training": training,
        "ceiling": ceiling,
        "broker_warmup": broker_warmup,
        "onml": onml,
        "onml_by_batch_size": onml_by_batch,
        "per_record_udf": per_record,
        "per_record_onnx": per_record_onnx,
        "plain_consumer_batch1": plain_batch1,
        "plain_consumer": plain_batched,
        "http_service": http,
        "options": asdict(options),
    }
    document["errors"] = errors

    paths = write_plots(out_dir, ceiling, onml, onml_by_batch, plain_batch1, plain_batched, config.max_batch_size)
    markdown = compare_markdown(document) + "".join(f"\n![{path.stem}]({path.name})\n" for path in paths)
    files = finish(document, started, out_dir, "compare", markdown)
    print("\n" + compare_markdown(document), flush=True)
    return document, files + paths


def summarize_compare(environment: dict[str, Any], max_batch_size: int, max_batch_wait_ms: int,
                      onml: dict | None, ceiling: list[dict], per_record: dict | None,
                      per_record_onnx: dict | None, plain_batch1: dict | None,
                      plain_batched: dict | None, http: dict | None, training: dict | None) -> dict[str, Any]:
    """Collect the headline figures of a compare run and onml's ratio to each baseline."""
    then = (onml or {}).get("then") or {}
    half = next((step for step in then.get("rates", []) if step["fraction_of_drain_rps"] == 0.5), None)
    lone = then.get("lone")
    best = max((row for row in ceiling if row.get("images_per_s")), key=lambda row: row["images_per_s"], default=None)
    summary = {
        "onml_rps": (onml or {}).get("rps"),
        "ceiling_rps": ceiling_at(ceiling, max_batch_size),
        "ceiling_best_rps": best["images_per_s"] if best else None,
        "ceiling_best_batch_size": best["batch_size"] if best else None,
        "per_record_udf_rps": (per_record or {}).get("rps"),
        "per_record_onnx_rps": (per_record_onnx or {}).get("rps"),
        "plain_consumer_rps": (plain_batched or {}).get("rps"),
        "plain_consumer_batch1_rps": (plain_batch1 or {}).get("rps"),
        "http_service_rps": (http or {}).get("rps"),
        "half_load_rps": None if half is None else half["rate_per_s"],
        "p99_ms_at_half_load": None if half is None else half["latency_ms"]["p99"],
        "lone_request_ms": None if lone is None else lone["latency_ms"]["p50"],
        "lone_request_p95_ms": None if lone is None else lone["latency_ms"]["p95"],
        "max_batch_size": max_batch_size,
        "max_batch_wait_ms": max_batch_wait_ms,
        "inference_rss_mb": (onml or {}).get("peak_rss_mb"),
        "train_samples_per_s": (training or {}).get("samples_per_s"),
        "train_samples_to_97_percent": (training or {}).get("samples_to_target"),
        "commit": environment["git"]["commit"],
    }
    summary["onml_ratio_to"] = stats.compare_ratios(summary)
    return summary


def compare_markdown(document: dict[str, Any]) -> str:
    """Return the compare table (requests/s and onml's ratio to each) and the other headline figures."""
    onml = document.get("onml_rps")
    rows = [[f"onml inference job (drain; max batch {document['max_batch_size']}, "
             f"max wait {document['max_batch_wait_ms']} ms)", report.format_number(onml), "1.00"]]
    for key, label in stats.BASELINE_KEYS:
        ratio = document["onml_ratio_to"].get(key)
        rows.append([label, report.format_number(document.get(key)), report.format_number(ratio, 2)])
        if key == "ceiling_rps":
            label = f"ceiling at its best batch size ({document.get('ceiling_best_batch_size') or '-'})"
            best = document.get("ceiling_best_rps")
            rows.append([label, report.format_number(best), report.format_number(stats.ratio(onml, best), 2)])
    text = report.markdown_table(("system", "requests/s", "onml ÷ system"), rows)
    samples_to_target = document.get("train_samples_to_97_percent")
    text += (
        f"\n- p99 send→result latency at half of onml's drain rate "
        f"({report.format_number(document.get('half_load_rps'))} requests/s, open loop): "
        f"{report.format_number(document.get('p99_ms_at_half_load'), 1)} ms\n"
        f"- lone-request latency (p50 / p95) at max_batch_wait_ms={document['max_batch_wait_ms']}: "
        f"{report.format_number(document.get('lone_request_ms'), 1)} / "
        f"{report.format_number(document.get('lone_request_p95_ms'), 1)} ms\n"
        f"- inference job's peak RSS (whole process tree): {report.format_number(document.get('inference_rss_mb'))} MB\n"
        f"- training job: {report.format_number(document.get('train_samples_per_s'))} samples/s; "
        f"{TARGET_ACCURACY:.0%} prequential accuracy "
        + (f"after {samples_to_target:,} samples\n" if samples_to_target else "not reached\n")
    )
    if document.get("errors"):
        text += "\nSteps that failed:\n\n" + "".join(f"- {name}: {error}\n" for name, error in document["errors"].items())
    return text


def write_plots(out_dir: Path, ceiling: list[dict], onml: dict | None, onml_by_batch: list[dict],
                plain_batch1: dict | None, plain_batched: dict | None, max_batch_size: int) -> list[Path]:
    series = {
        "ceiling (in-process forward pass, 1 thread)": [(row["batch_size"], row["images_per_s"]) for row in ceiling],
        "onml inference job (drain)": [(run["settings"]["max_batch_size"], run["rps"])
                                       for run in [onml, *onml_by_batch] if run],
        "plain Kafka consumer (drain)": [(size, run["rps"]) for size, run in
                                         ((1, plain_batch1), (max_batch_size, plain_batched)) if run],
    }
    paths = [report.plot_throughput_vs_batch(out_dir / "compare-throughput-vs-batch.png", series,
                                             "requests/s by batch size")]
    steps = ((onml or {}).get("then") or {}).get("rates") or []
    if steps:
        paths.append(report.plot_latency_vs_rate(out_dir / "compare-latency-vs-rate.png", steps,
                                                 "onml inference job: latency under open-loop load"))
    return paths
