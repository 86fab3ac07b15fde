"""Result files: JSON, a markdown table and PNG plots under the results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks import stats


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats.round_floats(document), indent=2, default=str) + "\n")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def format_number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def environment_lines(environment: Mapping[str, Any]) -> str:
    """Describe machine, versions and commit in a few markdown lines."""
    machine = environment["machine"]
    versions = environment["versions"]
    git = environment["git"]
    memory = machine.get("memory_mb")
    load = machine.get("load_average_1_5_15")
    commit = git.get("commit") or "unknown"
    return (
        f"- machine: {machine.get('cores')} cores, {machine.get('cpu_model') or 'unknown CPU'}, "
        f"{format_number(memory / 1024 if memory else None, 1)} GiB memory; "
        f"load average at start {', '.join(f'{value:.2f}' for value in load) if load else '-'}\n"
        f"- versions: Python {versions.get('python')}, Flink {versions.get('flink')}, torch {versions.get('torch')}, "
        f"onnxruntime {versions.get('onnxruntime')}\n"
        f"- commit: {commit}{' (with uncommitted changes)' if git.get('dirty') else ''}\n"
        f"- recorded: {environment.get('recorded_at')}\n"
    )


def drain_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        settings = result.get("settings", {})
        rows.append([
            result.get("system"),
            settings.get("max_batch_size", "-"),
            settings.get("max_batch_wait_ms", "-"),
            settings.get("parallelism", "-"),
            settings.get("topic_partitions", "-"),
            format_number(result.get("rps")),
            f"{result.get('answered')}/{result.get('sent')}",
            result.get("lost"),
            result.get("duplicated"),
            format_number(result.get("startup_s"), 1),
            format_number(result.get("peak_rss_mb")),
        ])
    return rows


DRAIN_HEADERS = ("system", "max batch", "max wait ms", "parallelism", "partitions", "results/s",
                 "answered", "lost", "duplicated", "start-up s", "peak RSS MB")


def rate_rows(steps: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for step in steps:
        latency = step.get("latency_ms") or {}
        until_result_ts = step.get("latency_to_result_ts_ms") or {}
        rows.append([
            format_number(step.get("rate_per_s")),
            format_number(step.get("send_rate_per_s")),
            format_number(latency.get("p50"), 1),
            format_number(latency.get("p95"), 1),
            format_number(latency.get("p99"), 1),
            format_number(latency.get("max"), 1),
            format_number(until_result_ts.get("p99"), 1),
            f"{step.get('answered')}/{step.get('sent')}",
            step.get("lost"),
            step.get("duplicated"),
            format_number(step.get("max_sender_lag_ms"), 1),
        ])
    return rows


RATE_HEADERS = ("rate /s", "sent /s", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99 until result_ts ms", "answered",
                "lost", "duplicated", "sender max lag ms")


def lone_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        latency = result.get("latency_ms") or {}
        rows.append([
            result.get("max_batch_wait_ms"),
            format_number(latency.get("p50"), 1),
            format_number(latency.get("p95"), 1),
            format_number(latency.get("max"), 1),
            f"{result.get('answered')}/{result.get('sent')}",
        ])
    return rows


LONE_HEADERS = ("max batch wait ms", "p50 ms", "p95 ms", "max ms", "answered")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_throughput_vs_batch(path: Path, series: Mapping[str, Sequence[tuple[int, float | None]]],
                             title: str) -> Path:
    """Plot requests/s against batch size, one line per series of ``(batch size, rate)`` points."""
    pyplot = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        usable = sorted((size, rate) for size, rate in points if rate is not None)
        if usable:
            axes.plot([size for size, _ in usable], [rate for _, rate in usable], marker="o", label=label)
    axes.set_xscale("log", base=2)
    sizes = sorted({size for points in series.values() for size, rate in points if rate is not None})
    if sizes:
        axes.set_xticks(sizes)
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("batch size (max_batch_size for the jobs)")
    axes.set_ylabel("requests/s")
    return _save_figure(pyplot, figure, axes, title, path)


def _save_figure(pyplot, figure, axes, title: str, path: Path) -> Path:
    """Title, grid and legend the axes, then write the figure as a PNG and close it."""
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def plot_latency_vs_rate(path: Path, steps: Sequence[Mapping[str, Any]], title: str) -> Path:
    """Plot p50, p95, p99 and max send→result latency against the offered rate."""
    pyplot = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    ordered = sorted((step for step in steps if step.get("latency_ms", {}).get("count")),
                     key=lambda step: step["rate_per_s"])
    rates = [step["rate_per_s"] for step in ordered]
    for key in ("p50", "p95", "p99", "max"):
        axes.plot(rates, [step["latency_ms"][key] for step in ordered], marker="o", label=key)
    axes.set_xlabel("offered load (requests/s, open loop)")
    axes.set_ylabel("send → result latency (ms)")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter(NullFormatter())
    return _save_figure(pyplot, figure, axes, title, path)
