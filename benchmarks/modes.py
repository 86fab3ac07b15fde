"""The bench modes behind ``onml bench drain``, ``rate`` and ``lone``, and what they share.

Each mode starts the bench's stack (unless ``--use-running`` is given), makes sure a
snapshot is served, measures, and writes ``<mode>.json`` and ``<mode>.md`` (and plots)
under the results folder.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from benchmarks import report
from benchmarks.drain import run_drain
from benchmarks.environment import describe_environment
from benchmarks.harness import (
    ONML_JOB,
    PER_RECORD_JOB,
    PER_RECORD_ONNX_JOB,
    BenchContext,
    SystemSpec,
    bench_config,
    bench_stack,
    describe_served_model,
    load_request_images,
    plain_consumer_spec,
    publish_untrained_snapshot,
)
from benchmarks.rate import run_rates
from shared.config import Config

SYSTEM_CHOICES = ("onml", "per-record-udf", "per-record-onnx", "plain-consumer", "plain-consumer-batch1")


def system_spec(name: str, config: Config) -> SystemSpec:
    """Return the system under test called ``name`` (one of :data:`SYSTEM_CHOICES`)."""
    if name == "onml":
        return ONML_JOB
    if name == "per-record-udf":
        return PER_RECORD_JOB
    if name == "per-record-onnx":
        return PER_RECORD_ONNX_JOB
    if name == "plain-consumer":
        return plain_consumer_spec(config.max_batch_size, config.max_batch_wait_ms)
    if name == "plain-consumer-batch1":
        return plain_consumer_spec(1, config.max_batch_wait_ms)
    raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEM_CHOICES)}")


@contextmanager
def bench_context(base: Config, *, use_running: bool, keep_stack: bool, model: str, progress: bool = True,
                  **overrides: Any) -> Iterator[BenchContext]:
    """Start the stack, load the request images and make sure a snapshot is served.

    ``model`` is "untrained" (publish a seeded untrained model), "latest" (serve the
    store's latest snapshot, which must exist) or "none" (the caller publishes one).
    """
    from shared.store import SnapshotNotFoundError

    config = bench_config(base, use_running, **overrides)
    with bench_stack(config, use_running, keep_stack) as store:
        context = BenchContext(config, store, load_request_images(config), progress)
        if model == "untrained":
            publish_untrained_snapshot(store, config)
        elif model == "latest":
            if store.latest_version() is None:
                raise SnapshotNotFoundError(f"no snapshot under {config.model_key_prefix!r} to benchmark; "
                                            "use --model untrained or train one first")
        elif model != "none":
            raise ValueError(f"unknown model choice {model!r}; expected untrained, latest or none")
        yield context


def base_document(mode: str, context: BenchContext, parameters: dict[str, Any]) -> dict[str, Any]:
    """Return what every result file records: environment, config, parameters and the served model."""
    return {
        "mode": mode,
        "environment": describe_environment(),
        "config": context.config.redacted(),
        "parameters": parameters,
        "served_model": describe_served_model(context.store),
    }


def finish(document: dict[str, Any], started: float, out_dir: Path, name: str, markdown: str) -> list[Path]:
    """Add the elapsed time and write ``name.json`` and ``name.md``; return the paths."""
    document["elapsed_s"] = time.monotonic() - started
    header = f"# onml bench {document['mode']}\n\n{report.environment_lines(document['environment'])}\n"
    return [report.write_json(out_dir / f"{name}.json", document),
            report.write_text(out_dir / f"{name}.md", header + markdown)]


def drain_mode(context: BenchContext, system: str, requests: int, timeout_s: float, out_dir: Path,
               parameters: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    started = time.monotonic()
    document = base_document("drain", context, parameters)
    spec = system_spec(system, context.config)
    result = run_drain(context, spec, "drain", requests, timeout_s)
    document["result"] = result
    markdown = report.markdown_table(report.DRAIN_HEADERS, report.drain_rows([result]))
    return document, finish(document, started, out_dir, "drain", markdown)


def rate_mode(context: BenchContext, system: str, rates: Sequence[float], duration_s: float, out_dir: Path,
              parameters: dict[str, Any], warmup_s: float = 0.0) -> tuple[dict[str, Any], list[Path]]:
    started = time.monotonic()
    document = base_document("rate", context, parameters)
    spec = system_spec(system, context.config)
    result = run_rates(context, spec, "rate", rates, duration_s, open_loop_warmup_s=warmup_s)
    document["result"] = result
    plot = report.plot_latency_vs_rate(out_dir / "rate-latency.png", result["rates"],
                                       f"{spec.name}: latency under open-loop load")
    markdown = report.markdown_table(report.RATE_HEADERS, report.rate_rows(result["rates"]))
    markdown += f"\n![latency vs rate]({plot.name})\n"
    return document, finish(document, started, out_dir, "rate", markdown) + [plot]


def lone_mode(context: BenchContext, waits_ms: Sequence[int], count: int, spacing_ms: float, out_dir: Path,
              parameters: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    """Measure lone-request latency of the inference job for each max_batch_wait_ms (one job start each)."""
    started = time.monotonic()
    document = base_document("lone", context, parameters)
    results = []
    for wait_ms in waits_ms:
        print(f"lone requests with max_batch_wait_ms={wait_ms} ...", flush=True)
        run = run_rates(context, ONML_JOB, f"lone{wait_ms}", [], 1.0, lone_count=count, lone_spacing_ms=spacing_ms,
                        max_batch_wait_ms=wait_ms)
        results.append({**run["lone"], "settings": run["settings"], "warm_up_s": run["warm_up_s"]})
    document["results"] = results
    markdown = report.markdown_table(report.LONE_HEADERS, report.lone_rows(results))
    return document, finish(document, started, out_dir, "lone", markdown)
