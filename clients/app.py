"""The Gradio app: draw a digit, compare snapshots, watch training (``onml app``).

- **Draw**: the sketch goes through :func:`shared.preprocess.drawing_to_mnist`, is published
  to the request topic and answered by the inference job on the results topic.
- **Compare**: the same sketch scored by several stored snapshots, loaded read-only from
  the model store inside this process.
- **Training**: a dashboard refreshed by a timer while its tab is open: prequential
  accuracy, snapshot timeline, training and inference rates, latency and dead letters.

The handlers below are plain functions of the services and the inputs, so unit tests
call them without a browser. :func:`build_app` wires them to components and
:func:`start_app` serves the app on ``config.app_host`` (127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

# Gradio reads this when a Blocks is created; the app sends no telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import redis  # noqa: E402

from clients import app_views as views  # noqa: E402
from clients.app_pipeline import (  # noqa: E402
    Answer,
    Diagnosis,
    ModelCache,
    PipelineClient,
    PipelineUnavailableError,
    ScoredVersion,
    SnapshotHistory,
    pick_versions,
    score_versions,
)
from clients.i18n import LANGUAGE_CHOICES, normalize_language, text  # noqa: E402
from shared.config import Config, ConfigError  # noqa: E402
from shared.preprocess import EmptyDrawingError, drawing_to_mnist  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_REFRESH_S = 5.0
# The sketch canvas in pixels; drawing_to_mnist scales any size down to 28×28.
CANVAS_SIDE = 400
# Brush radius in canvas pixels: about 1/14 of the side, so a digit drawn across most
# of the canvas keeps MNIST's stroke width (2 to 3 pixels of 28) after scaling.
BRUSH_RADIUS = 14

# NOTE: Gradio 6.31 does not update tab labels from event handlers (checked in Chromium),
# so the tab names carry both languages and everything inside the tabs switches.
TAB_LABELS = {"draw": "Draw · 画数字", "compare": "Compare · 比较版本", "training": "Training · 训练"}

CSS = """
.onml-digit { font-size: 96px; font-weight: 700; line-height: 1.1; text-align: center; min-height: 110px; }
"""


@dataclass
class AppServices:
    """The services the handlers use: the pipeline client, the snapshot cache and the snapshot history."""

    pipeline: PipelineClient
    models: ModelCache
    history: SnapshotHistory = field(default_factory=SnapshotHistory)

    @classmethod
    def from_config(cls, config: Config, timeout_s: float = DEFAULT_TIMEOUT_S) -> "AppServices":
        pipeline = PipelineClient(config, timeout_s)
        return cls(pipeline, ModelCache(pipeline.store))

    def close(self) -> None:
        self.pipeline.close()


# Draw tab


@dataclass(frozen=True)
class DrawOutcome:
    """The outcome of one press of Classify, kept so it can be shown again in another language.

    ``kind`` is ``empty`` (nothing drawn, nothing sent), ``answer`` or ``down``.
    """

    kind: str
    image: np.ndarray | None = None
    answer: Answer | None = None
    metadata: dict[str, Any] | None = None
    diagnosis: Diagnosis | None = None
    timed_out: bool = False
    timeout_s: float = 0.0


def drawing_image(drawing: Any) -> np.ndarray | None:
    """Return the sketch as a 28×28 MNIST-style image, or None when it has no ink.

    Gradio 6.31's Sketchpad (type="numpy", image_mode="RGBA") passes a dict with
    ``background``, ``layers`` and ``composite`` (H×W×4 uint8 arrays, strokes opaque,
    the rest transparent or white), or None before the first stroke.
    """
    if drawing is None:
        return None
    try:
        return drawing_to_mnist(drawing)
    except EmptyDrawingError:
        return None


def classify_drawing(services: AppServices, drawing: Any) -> DrawOutcome:
    """Send the sketch through the pipeline; an empty sketch is not sent."""
    image = drawing_image(drawing)
    if image is None:
        return DrawOutcome("empty")
    pipeline = services.pipeline
    try:
        answer = pipeline.classify(image)
    except PipelineUnavailableError as error:
        return DrawOutcome("down", image, diagnosis=error.diagnosis, timed_out=error.timed_out,
                           timeout_s=pipeline.timeout_s)
    return DrawOutcome("answer", image, answer, pipeline.snapshot_metadata(answer.model_version))


def render_draw(outcome: DrawOutcome | None, language: str) -> tuple[str, str, dict[str, float] | None, Any]:
    """Return the digit HTML, the details Markdown, the top probabilities and the 28×28 preview."""
    if outcome is None:
        return views.digit_html(None), "", None, None
    preview = None if outcome.image is None else views.model_input_preview(outcome.image)
    if outcome.kind == "empty":
        return views.digit_html(None), f"✏️ {text('empty_drawing', language)}", None, None
    if outcome.kind == "down":
        message = views.diagnosis_message(outcome.diagnosis, outcome.timed_out, outcome.timeout_s, language)
        return views.digit_html(None), message, None, preview
    answer = outcome.answer
    return (views.digit_html(answer.label), views.answer_markdown(answer, outcome.metadata, language),
            views.top_probabilities(answer.probabilities), preview)


# Compare tab


@dataclass(frozen=True)
class CompareOutcome:
    """The versions a sketch was scored by, or the reason (an i18n key) it was not."""

    scored: tuple[ScoredVersion, ...] = ()
    message_key: str | None = None
    message_fields: dict[str, Any] = field(default_factory=dict)


def list_snapshots(services: AppServices) -> list[dict[str, Any]]:
    """Return stored snapshot metadata, oldest first (raises redis or config errors)."""
    try:
        return services.pipeline.store().list_snapshots()
    except (redis.RedisError, ConfigError):
        services.pipeline.forget_store()
        raise


def compare_drawing(services: AppServices, drawing: Any, versions: Sequence[int] | None) -> CompareOutcome:
    """Score the sketch with each chosen stored version, loaded read-only into this process."""
    image = drawing_image(drawing)
    if image is None:
        return CompareOutcome(message_key="empty_drawing")
    if not versions:
        return CompareOutcome(message_key="compare_pick_versions")
    try:
        scored = score_versions(services.models, image, sorted(int(v) for v in versions))
    except (redis.RedisError, ConfigError) as error:
        services.pipeline.forget_store()
        return CompareOutcome(message_key="store_unreachable", message_fields={"error": str(error)})
    return CompareOutcome(tuple(scored), "compare_done", {"count": len(scored)})


def render_compare(outcome: CompareOutcome | None, language: str,
                   now: float | None = None) -> tuple[str, pd.DataFrame | None, Any]:
    """Return the status Markdown, the table and the probability figure."""
    if outcome is None:
        return "", None, None
    now = time.time() if now is None else now
    message = "" if outcome.message_key is None else text(outcome.message_key, language, **outcome.message_fields)
    if not outcome.scored:
        return message, None, None
    return (message, views.compare_table(outcome.scored, now, language),
            views.compare_figure(outcome.scored, language))


def refresh_versions(services: AppServices, language: str, selected: Sequence[int] | None) -> tuple[Any, str]:
    """Return the checkbox update listing stored versions (keeping still-stored selections) and a status line."""
    try:
        records = list_snapshots(services)
    except (redis.RedisError, ConfigError) as error:
        return gr.update(), text("store_unreachable", language, error=str(error))
    if not records:
        return gr.update(choices=[], value=[]), text("compare_no_versions", language)
    stored = [int(record["version"]) for record in records]
    kept = [int(version) for version in selected or [] if int(version) in stored]
    value = kept or pick_versions(stored)
    return gr.update(choices=views.version_choices(records, language), value=value), ""


# Training tab


@dataclass(frozen=True)
class Dashboard:
    summary: str
    accuracy: Any
    throughput: Any
    inference: str
    timeline: pd.DataFrame


def build_dashboard(services: AppServices, language: str, now: float | None = None) -> Dashboard:
    """Read snapshot metadata and the router's statistics and build the Training tab's content."""
    now = time.time() if now is None else now
    notes = []
    try:
        records = services.history.update(list_snapshots(services))
        store_reached = True
    except (redis.RedisError, ConfigError) as error:
        # Snapshots seen before the outage are still shown.
        records = services.history.update([])
        store_reached = False
        notes.append(text("store_unreachable", language, error=str(error)))

    router = services.pipeline.router()
    inference_stats = dead_letters = None
    if router is None:
        notes.append(text("kafka_unreachable_short", language, error=services.pipeline.config.kafka_bootstrap))
    else:
        inference_stats = router.inference_stats()
        dead_letters = router.dead_letter_stats()

    summaries = [views.snapshot_summary(records, now, language)] if records or store_reached else []
    summary = "\n\n".join([*summaries, *notes])
    lines = []
    if inference_stats is not None:
        lines.append(views.inference_summary(inference_stats, language))
    if dead_letters is not None:
        lines.append(views.dead_letter_summary(dead_letters, language))
    return Dashboard(
        summary=summary,
        accuracy=views.accuracy_figure(records, language),
        throughput=views.throughput_figure(records, inference_stats, language, services.pipeline.window_s),
        inference="\n\n".join(lines),
        timeline=views.timeline_table(records, now, language),
    )


# Layout


def build_app(services: AppServices, language: str = "en", refresh_s: float = DEFAULT_REFRESH_S) -> gr.Blocks:
    """Lay out the three tabs and connect them to the handlers above."""
    language = normalize_language(language)

    def t(key: str, **fields: Any) -> str:
        return text(key, language, **fields)

    with gr.Blocks(title="onml", analytics_enabled=False) as app:
        draw_state = gr.State(None)
        compare_state = gr.State(None)

        with gr.Row(equal_height=True):
            title = gr.Markdown(t("title"))
            language_radio = gr.Radio(LANGUAGE_CHOICES, value=language, label=t("language_label"),
                                      elem_id="language", scale=0, min_width=240)
        intro = gr.Markdown(t("intro"))

        with gr.Tabs():
            with gr.Tab(TAB_LABELS["draw"], id="draw", elem_id="tab-draw") as draw_tab:
                draw_intro = gr.Markdown(t("draw_intro"))
                with gr.Row():
                    with gr.Column(scale=3):
                        sketchpad = gr.Sketchpad(
                            type="numpy", image_mode="RGBA", format="png", label=t("sketchpad_label"),
                            canvas_size=(CANVAS_SIDE, CANVAS_SIDE), fixed_canvas=True, height=CANVAS_SIDE + 120,
                            layers=False, transforms=(), elem_id="sketchpad",
                            brush=gr.Brush(default_size=BRUSH_RADIUS, colors=["#000000"], color_mode="fixed"),
                        )
                        classify_button = gr.Button(t("classify_button"), variant="primary", elem_id="classify")
                    with gr.Column(scale=2):
                        digit = gr.HTML(views.digit_html(None), elem_id="predicted-digit")
                        details = gr.Markdown(elem_id="answer-details")
                        probabilities = gr.Label(num_top_classes=5, label=t("probabilities_label"),
                                                 elem_id="probabilities")
                        model_input = gr.Image(label=t("model_input_label"), image_mode="L", interactive=False,
                                               height=240, elem_id="model-input")

            with gr.Tab(TAB_LABELS["compare"], id="compare", elem_id="tab-compare") as compare_tab:
                compare_intro = gr.Markdown(t("compare_intro"))
                versions = gr.CheckboxGroup(choices=[], label=t("versions_label"), elem_id="compare-versions")
                with gr.Row():
                    refresh_button = gr.Button(t("refresh_versions_button"), elem_id="refresh-versions")
                    compare_button = gr.Button(t("compare_button"), variant="primary", elem_id="compare")
                compare_status = gr.Markdown(elem_id="compare-status")
                compare_table = gr.Dataframe(label=t("compare_table_label"), interactive=False,
                                             elem_id="compare-table")
                compare_plot = gr.Plot(label=t("compare_plot_label"), elem_id="compare-plot")

            with gr.Tab(TAB_LABELS["training"], id="training", elem_id="tab-training") as training_tab:
                training_intro = gr.Markdown(t("training_intro", interval=f"{refresh_s:g}"))
                snapshot_md = gr.Markdown(elem_id="snapshot-summary")
                accuracy_plot = gr.Plot(label=t("accuracy_plot_label"), elem_id="accuracy-plot")
                throughput_plot = gr.Plot(label=t("throughput_plot_label"), elem_id="throughput-plot")
                inference_md = gr.Markdown(elem_id="inference-summary")
                timeline = gr.Dataframe(label=t("timeline_label"), interactive=False, elem_id="snapshot-timeline")

        # The dashboard refreshes only while the Training tab is open.
        timer = gr.Timer(refresh_s, active=False)

        # Events

        def on_classify(drawing: Any, lang: str):
            outcome = classify_drawing(services, drawing)
            return (outcome, *render_draw(outcome, lang))

        classify_button.click(on_classify, [sketchpad, language_radio],
                              [draw_state, digit, details, probabilities, model_input],
                              concurrency_limit=4, show_progress="minimal")

        def on_compare(drawing: Any, chosen: list[int], lang: str):
            outcome = compare_drawing(services, drawing, chosen)
            return (outcome, *render_compare(outcome, lang))

        compare_button.click(on_compare, [sketchpad, versions, language_radio],
                             [compare_state, compare_status, compare_table, compare_plot], concurrency_limit=2)

        def on_refresh_versions(lang: str, chosen: list[int]):
            return refresh_versions(services, lang, chosen)

        refresh_button.click(on_refresh_versions, [language_radio, versions], [versions, compare_status])

        def on_dashboard(lang: str):
            board = build_dashboard(services, lang)
            return board.summary, board.accuracy, board.throughput, board.inference, board.timeline

        dashboard_outputs = [snapshot_md, accuracy_plot, throughput_plot, inference_md, timeline]
        timer.tick(on_dashboard, [language_radio], dashboard_outputs, concurrency_limit=2, show_progress="hidden")

        draw_tab.select(lambda: gr.Timer(active=False), None, timer)
        compare_tab.select(lambda: gr.Timer(active=False), None, timer).then(
            on_refresh_versions, [language_radio, versions], [versions, compare_status])
        training_tab.select(lambda: gr.Timer(active=True), None, timer).then(
            on_dashboard, [language_radio], dashboard_outputs, show_progress="hidden")

        def on_language(lang: str, draw_outcome: DrawOutcome | None, compare_outcome: CompareOutcome | None):
            lang = normalize_language(lang)
            return (
                text("title", lang),
                gr.update(label=text("language_label", lang)),
                text("intro", lang),
                text("draw_intro", lang),
                gr.update(label=text("sketchpad_label", lang)),
                gr.update(value=text("classify_button", lang)),
                *render_draw(draw_outcome, lang)[:2],
                gr.update(label=text("probabilities_label", lang)),
                gr.update(label=text("model_input_label", lang)),
                text("compare_intro", lang),
                gr.update(label=text("versions_label", lang)),
                gr.update(value=text("refresh_versions_button", lang)),
                gr.update(value=text("compare_button", lang)),
                *_relabel_compare(compare_outcome, lang),
                text("training_intro", lang, interval=f"{refresh_s:g}"),
                gr.update(label=text("accuracy_plot_label", lang)),
                gr.update(label=text("throughput_plot_label", lang)),
                gr.update(label=text("timeline_label", lang)),
            )

        language_radio.change(
            on_language, [language_radio, draw_state, compare_state],
            [title, language_radio, intro, draw_intro, sketchpad, classify_button, digit, details, probabilities,
             model_input, compare_intro, versions, refresh_button, compare_button, compare_status, compare_table,
             compare_plot, training_intro, accuracy_plot, throughput_plot, timeline],
        )
    return app


def _relabel_compare(outcome: CompareOutcome | None, language: str) -> tuple[Any, Any, Any]:
    status, table, figure = render_compare(outcome, language)
    table_update = gr.update(label=text("compare_table_label", language))
    plot_update = gr.update(label=text("compare_plot_label", language))
    if table is not None:
        table_update = gr.update(value=table, label=text("compare_table_label", language))
        plot_update = gr.update(value=figure, label=text("compare_plot_label", language))
    return status, table_update, plot_update


# Serving


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RunningApp:
    """A served app: its URL, and :meth:`close` to stop the server and the pipeline connections."""

    blocks: gr.Blocks
    services: AppServices
    url: str

    def close(self) -> None:
        self.blocks.close()
        self.services.close()


def start_app(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    language: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    refresh_s: float = DEFAULT_REFRESH_S,
    services: AppServices | None = None,
) -> RunningApp:
    """Serve the app on ``host:port`` (default ``config.app_host``/``app_port``) and return at once.

    The server runs on background threads until :meth:`RunningApp.close`. The app
    connects to Kafka now if it can, so the dashboard shows results from the start, and
    again on the next request if Kafka is down.
    """
    host = host or config.app_host
    port = port or config.app_port
    services = services or AppServices.from_config(config, timeout_s)
    if services.pipeline.router() is None:
        logger.warning("Kafka at %s is not reachable yet; the app starts anyway and retries on each request",
                       config.kafka_bootstrap)
    blocks = build_app(services, language or config.app_language, refresh_s)
    blocks.queue(default_concurrency_limit=2)
    try:
        _, local_url, _ = blocks.launch(
            server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True, show_error=False,
            prevent_thread_lock=True, theme=gr.themes.Default(), css=CSS, footer_links=["api"],
        )
    except BaseException:
        services.close()
        raise
    return RunningApp(blocks, services, local_url or f"http://{host}:{port}/")
