"""Views of the Gradio app: messages, tables and matplotlib figures built from plain data.

These functions take results, snapshot metadata and statistics and return text,
pandas tables or figures in the chosen language. They do no I/O, so unit tests call them
directly.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib import font_manager
from matplotlib.figure import Figure

from clients.app_pipeline import Answer, DeadLetterStats, Diagnosis, InferenceStats, ScoredVersion
from clients.i18n import normalize_language, text

# Fonts with Chinese glyphs that matplotlib may find; Debian packages them as
# fonts-wqy-microhei, fonts-wqy-zenhei and fonts-noto-cjk.
_CJK_FONT_NAMES = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans CJK JP",
                   "Source Han Sans SC", "SimHei")
_INSTALLED_FONTS = {font.name for font in font_manager.fontManager.ttflist}
CJK_FONTS = [name for name in _CJK_FONT_NAMES if name in _INSTALLED_FONTS]
# matplotlib (3.6 and later) falls back glyph by glyph along a list of named families.
# The generic "sans-serif" resolves to one font only, so the families are named here.
# This sets the default for every figure in the app's process.
matplotlib.rcParams["font.family"] = ["DejaVu Sans", *CJK_FONTS]

FIGURE_DPI = 100
ACCURACY_COLOR = "#1f77b4"
RATE_COLOR = "#2ca02c"
REQUESTS_COLOR = "#ff7f0e"


def plot_language(language: str) -> str:
    """Return the language for text inside figures: Chinese only if a font with its glyphs is installed."""
    language = normalize_language(language)
    return language if language == "en" or CJK_FONTS else "en"


# Numbers


def format_percent(value: float | None, language: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return text("not_available", language)
    return f"{value:.1%}"


def format_ms(value: float | None, language: str) -> str:
    """Format a duration in milliseconds: '12.3 ms' below one second, '1.25 s' above."""
    if value is None or math.isnan(value):
        return text("not_available", language)
    if value < 1000.0:
        return f"{value:.1f} ms"
    return f"{value / 1000.0:.2f} s"


def format_count(value: int | None, language: str) -> str:
    if value is None:
        return text("not_available", language)
    return f"{int(value):,}"


def format_age(seconds: float | None, language: str) -> str:
    """Format how long ago something happened, in the largest whole unit: '42 s ago', '3 min ago'."""
    if seconds is None or math.isnan(seconds):
        return text("not_available", language)
    seconds = max(0.0, seconds)
    if seconds < 60:
        return text("age_seconds", language, value=int(seconds))
    if seconds < 3600:
        return text("age_minutes", language, value=int(seconds // 60))
    if seconds < 86400:
        return text("age_hours", language, value=int(seconds // 3600))
    return text("age_days", language, value=int(seconds // 86400))


def format_clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


# The Draw tab


def digit_html(label: int | None) -> str:
    """Return the big predicted digit as HTML, or an empty box when there is no result."""
    shown = "–" if label is None else str(int(label))
    return f'<div class="onml-digit" data-digit="{"" if label is None else int(label)}">{html.escape(shown)}</div>'


def top_probabilities(probabilities: Sequence[float], count: int = 5) -> dict[str, float]:
    """Return the ``count`` most probable digits as {'7': 0.93, ...}, the shape gr.Label shows as bars."""
    order = np.argsort(np.asarray(probabilities))[::-1][:count]
    return {str(int(digit)): float(probabilities[digit]) for digit in order}


def answer_markdown(answer: Answer, metadata: dict[str, Any] | None, language: str) -> str:
    """Describe a result: the version that computed it, that version's training state and the latency."""
    if metadata:
        details = text("version_details", language, samples=format_count(metadata.get("samples_seen"), language),
                       accuracy=format_percent(metadata.get("accuracy"), language))
    else:
        details = text("not_available", language)
    lines = [
        text("answered_by", language, version=answer.model_version, details=details),
        text("latency", language, round_trip=format_ms(answer.round_trip_ms, language),
             pipeline=format_ms(answer.pipeline_ms, language), batch=answer.batch_size),
        text("request_id", language, request_id=answer.request_id),
    ]
    return "\n\n".join(lines)


def diagnosis_message(diagnosis: Diagnosis, timed_out: bool, timeout_s: float, language: str) -> str:
    """Explain why a drawing got no result, naming the part of the pipeline that is down."""
    if diagnosis.component == "kafka":
        reason = text("down_kafka", language, address=diagnosis.address, error=_short(diagnosis.error))
    elif diagnosis.component == "redis":
        reason = text("down_redis", language, address=diagnosis.address, error=_short(diagnosis.error))
    elif diagnosis.component == "no_snapshot":
        reason = text("down_no_snapshot", language)
    elif diagnosis.component == "inference":
        reason = text("down_inference", language, version=diagnosis.latest_version)
    else:
        reason = text("send_failed", language, error=_short(diagnosis.error))
    if timed_out:
        return f"⚠️ {text('timed_out', language, timeout=f'{timeout_s:g}')} {reason}"
    return f"⚠️ {reason}"


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit - 1] + "…"


def model_input_preview(image: np.ndarray, scale: int = 8) -> np.ndarray:
    """Enlarge a 28×28 image by ``scale`` with square pixels, so the browser does not blur it."""
    return np.kron(image, np.ones((scale, scale), dtype=np.uint8))


# The Compare tab


def compare_table(scored: Sequence[ScoredVersion], now: float, language: str) -> pd.DataFrame:
    """Return one row per version: its age, samples seen, prequential accuracy and predicted digit."""
    rows = []
    for entry in scored:
        if entry.error is not None:
            key = "compare_version_missing" if entry.error == "missing" else "compare_version_failed"
            note = text(key, language, version=entry.version, error=_short(entry.error_detail, 120))
            rows.append([entry.version, note, "", "", "", ""])
            continue
        created = entry.metadata.get("created_at")
        probability = entry.probabilities[entry.label] if entry.label is not None else None
        rows.append([
            entry.version,
            format_age(None if created is None else now - created, language),
            format_count(entry.metadata.get("samples_seen"), language),
            format_percent(entry.metadata.get("accuracy"), language),
            "" if entry.label is None else str(entry.label),
            format_percent(probability, language),
        ])
    columns = [text(key, language) for key in ("column_version", "column_age", "column_samples",
                                               "column_accuracy", "column_predicted", "column_confidence")]
    return pd.DataFrame(rows, columns=columns)


def compare_figure(scored: Sequence[ScoredVersion], language: str) -> Figure | None:
    """Draw a heat map of each version's probabilities for the ten digits, or return None when no version scored."""
    usable = [entry for entry in scored if entry.error is None]
    if not usable:
        return None
    language = plot_language(language)
    figure = Figure(figsize=(8, 0.55 * len(usable) + 1.4), dpi=FIGURE_DPI, layout="constrained")
    axes = figure.add_subplot()
    matrix = np.array([entry.probabilities for entry in usable])
    axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(10))
    axes.set_yticks(range(len(usable)))
    axes.set_yticklabels([f"v{entry.version} ({format_count(entry.metadata.get('samples_seen'), language)})"
                          for entry in usable])
    for row, entry in enumerate(usable):
        for digit, probability in enumerate(entry.probabilities):
            if probability >= 0.005:
                axes.text(digit, row, f"{probability:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if probability > 0.6 else "black")
    axes.set_title(text("compare_plot_label", language))
    return figure


def version_choices(records: Sequence[dict[str, Any]], language: str) -> list[tuple[str, int]]:
    """Return checkbox choices (label, version) for stored snapshots, oldest first."""
    return [(f"v{record['version']} · {format_count(record.get('samples_seen'), language)} · "
             f"{format_percent(record.get('accuracy'), language)}", int(record["version"]))
            for record in records]


# The Training tab


def _record_time(record: dict[str, Any]) -> float | None:
    """Return when a snapshot's training state was taken: ``trained_until``, else ``created_at``."""
    value = record.get("trained_until", record.get("created_at"))
    return float(value) if isinstance(value, (int, float)) else None


def training_rates(records: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """Return (time, samples/s) between consecutive snapshots, skipping pairs where training restarted."""
    rates = []
    for previous, current in zip(records, records[1:]):
        start, end = _record_time(previous), _record_time(current)
        added = (current.get("samples_seen") or 0) - (previous.get("samples_seen") or 0)
        if start is None or end is None or end <= start or added <= 0:
            continue
        rates.append((end, added / (end - start)))
    return rates


def _no_data(axes: Any, language: str) -> None:
    axes.text(0.5, 0.5, text("plot_no_data", language), ha="center", va="center", transform=axes.transAxes,
              color="grey")


def _time_axis(axes: Any) -> None:
    locator = mdates.AutoDateLocator(maxticks=6)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def accuracy_figure(records: Sequence[dict[str, Any]], language: str) -> Figure:
    """Plot prequential accuracy against samples seen (left) and against time (right)."""
    language = plot_language(language)
    figure = Figure(figsize=(11, 3.6), dpi=FIGURE_DPI, layout="constrained")
    by_samples, by_time = figure.subplots(1, 2)
    points = [(record.get("samples_seen"), record.get("accuracy"), _record_time(record)) for record in records
              if record.get("accuracy") is not None and record.get("samples_seen") is not None]

    by_samples.set_title(text("plot_accuracy_vs_samples", language))
    by_samples.set_xlabel(text("axis_samples", language))
    by_time.set_title(text("plot_accuracy_vs_time", language))
    by_time.set_xlabel(text("axis_time", language))
    for axes in (by_samples, by_time):
        axes.set_ylabel(text("axis_accuracy", language))
        axes.set_ylim(0.0, 1.02)
        axes.grid(alpha=0.3)
    if not points:
        _no_data(by_samples, language)
        _no_data(by_time, language)
        return figure

    samples = [point[0] for point in points]
    accuracy = [point[1] for point in points]
    by_samples.plot(samples, accuracy, marker="o", markersize=3, color=ACCURACY_COLOR)
    timed = [(dt.datetime.fromtimestamp(point[2]), point[1]) for point in points if point[2] is not None]
    if timed:
        by_time.plot([t for t, _ in timed], [a for _, a in timed], marker="o", markersize=3, color=ACCURACY_COLOR)
        _time_axis(by_time)
    else:
        _no_data(by_time, language)
    return figure


def throughput_figure(records: Sequence[dict[str, Any]], inference: InferenceStats | None,
                      language: str, window_s: float) -> Figure:
    """Plot training samples/s between snapshots (left) and inference requests per second (right)."""
    language = plot_language(language)
    figure = Figure(figsize=(11, 3.2), dpi=FIGURE_DPI, layout="constrained")
    training, requests = figure.subplots(1, 2)

    training.set_title(text("plot_training_rate", language))
    training.set_xlabel(text("axis_time", language))
    training.set_ylabel(text("axis_rate", language))
    training.grid(alpha=0.3)
    rates = training_rates(records)
    if rates:
        training.plot([dt.datetime.fromtimestamp(t) for t, _ in rates], [r for _, r in rates], marker="o",
                      markersize=3, color=RATE_COLOR)
        training.set_ylim(bottom=0)
        _time_axis(training)
    else:
        _no_data(training, language)

    window = int(round(window_s if inference is None else inference.window_s))
    requests.set_title(text("plot_requests_rate", language, window=window))
    requests.set_xlabel(text("axis_seconds_ago", language))
    requests.set_ylabel(text("axis_requests_rate", language))
    requests.grid(alpha=0.3)
    if inference is not None and inference.count:
        seconds = len(inference.per_second)
        requests.bar(np.arange(seconds, 0, -1), inference.per_second, width=1.0, color=REQUESTS_COLOR)
        requests.set_xlim(seconds, 0)
    else:
        _no_data(requests, language)
    return figure


def timeline_table(records: Sequence[dict[str, Any]], now: float, language: str, limit: int = 30) -> pd.DataFrame:
    """Return the newest ``limit`` snapshots, newest first, with the training rate since the one before."""
    rates = {}
    for previous, current in zip(records, records[1:]):
        start, end = _record_time(previous), _record_time(current)
        added = (current.get("samples_seen") or 0) - (previous.get("samples_seen") or 0)
        if start is not None and end is not None and end > start and added > 0:
            rates[current["version"]] = added / (end - start)
    rows = []
    for record in list(records)[::-1][:limit]:
        created = record.get("created_at")
        rate = rates.get(record["version"])
        rows.append([
            record["version"],
            format_clock(created),
            format_age(None if created is None else now - created, language),
            format_count(record.get("samples_seen"), language),
            format_percent(record.get("accuracy"), language),
            "" if rate is None else f"{rate:,.0f}",
            text("pinned_yes", language) if record.get("pinned") else "",
        ])
    columns = [text(key, language) for key in ("column_version", "column_created", "column_age", "column_samples",
                                               "column_accuracy", "column_rate", "column_pinned")]
    return pd.DataFrame(rows, columns=columns)


def snapshot_summary(records: Sequence[dict[str, Any]], now: float, language: str) -> str:
    if not records:
        return text("no_snapshots", language)
    newest = records[-1]
    created = newest.get("created_at")
    return text("snapshot_summary", language, count=len(records), version=newest["version"],
                samples=format_count(newest.get("samples_seen"), language),
                accuracy=format_percent(newest.get("accuracy"), language),
                age=format_age(None if created is None else now - created, language))


def inference_summary(stats: InferenceStats, language: str) -> str:
    window = int(round(stats.window_s))
    if not stats.count:
        return text("inference_none", language, window=window)
    return text("inference_summary", language, window=window, count=format_count(stats.count, language),
                rate=f"{stats.requests_per_s:.3g}",
                p50=format_ms(stats.latency_ms.get("p50"), language),
                p95=format_ms(stats.latency_ms.get("p95"), language),
                p99=format_ms(stats.latency_ms.get("p99"), language))


def dead_letter_summary(stats: DeadLetterStats, language: str) -> str:
    if stats.recent:
        recent = ", ".join(text("dead_letter_source", language, count=count, topic=topic, stage=stage)
                           for (topic, stage), count in sorted(stats.recent.items()))
    else:
        recent = text("dead_letter_none_recent", language)
    return text("dead_letter_summary", language, total=format_count(stats.total, language),
                window=int(round(stats.window_s)), recent=recent)
