"""Tests of the app's text and views: messages per language, number formats, tables and figures."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest
from matplotlib.figure import Figure

from clients import app_views as views
from clients.app_pipeline import Answer, DeadLetterStats, Diagnosis, InferenceStats, ScoredVersion
from clients.i18n import LANGUAGES, MESSAGES, normalize_language, text


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# Messages


def test_every_message_has_both_languages():
    for key, translations in MESSAGES.items():
        assert set(translations) == set(LANGUAGES), key
        for language in LANGUAGES:
            assert translations[language].strip(), f"{key} is empty in {language}"


def test_translations_share_placeholders():
    for key, translations in MESSAGES.items():
        assert placeholders(translations["en"]) == placeholders(translations["zh"]), key


def test_chinese_text_is_chinese():
    # Command names and units stay in Latin letters, but every message has Chinese words.
    for key, translations in MESSAGES.items():
        assert re.search(r"[\u4e00-\u9fff]", translations["zh"]), key


def test_text_selects_language():
    assert text("classify_button", "en") == "Classify"
    assert text("classify_button", "zh") == "识别"


def test_text_fills_fields():
    assert text("timed_out", "en", timeout=10) == "No answer within 10 s."
    assert text("timed_out", "zh", timeout=10) == "10 秒内没有收到答案。"


def test_unknown_language_falls_back_to_english():
    assert normalize_language("fr") == "en"
    assert normalize_language(None) == "en"
    assert text("classify_button", "fr") == "Classify"


def test_unknown_key_raises():
    with pytest.raises(KeyError):
        text("no_such_message", "en")


# Numbers


@pytest.mark.parametrize(("value", "expected"), [(0.4, "0.4 ms"), (12.34, "12.3 ms"), (999.94, "999.9 ms"),
                                                 (1250.0, "1.25 s"), (None, "n/a"), (float("nan"), "n/a")])
def test_format_ms(value, expected):
    assert views.format_ms(value, "en") == expected


def test_format_percent():
    assert views.format_percent(0.9134, "en") == "91.3%"
    assert views.format_percent(None, "en") == "n/a"
    assert views.format_percent(None, "zh") == "无"


def test_format_count():
    assert views.format_count(12345, "en") == "12,345"
    assert views.format_count(None, "zh") == "无"


@pytest.mark.parametrize(("seconds", "english", "chinese"), [
    (5, "5 s ago", "5 秒前"),
    (125, "2 min ago", "2 分钟前"),
    (7300, "2 h ago", "2 小时前"),
    (2 * 86400 + 5, "2 d ago", "2 天前"),
    (-3, "0 s ago", "0 秒前"),
])
def test_format_age(seconds, english, chinese):
    assert views.format_age(seconds, "en") == english
    assert views.format_age(seconds, "zh") == chinese


# Draw tab


def test_top_probabilities_sorted():
    probabilities = [0.01, 0.6, 0.02, 0.3, 0.0, 0.0, 0.05, 0.0, 0.02, 0.0]

    top = views.top_probabilities(probabilities, count=3)

    assert list(top) == ["1", "3", "6"]
    assert top["1"] == pytest.approx(0.6)


def test_digit_html():
    assert 'data-digit="7"' in views.digit_html(7)
    assert ">7<" in views.digit_html(7)
    assert 'data-digit=""' in views.digit_html(None)


def test_answer_markdown_names_version_and_latency():
    answer = Answer("app-1-0", 7, [0.0] * 7 + [1.0, 0.0, 0.0], model_version=12, round_trip_ms=35.2,
                    pipeline_ms=21.0, batch_size=3)
    metadata = {"samples_seen": 8000, "accuracy": 0.931}

    english = views.answer_markdown(answer, metadata, "en")
    chinese = views.answer_markdown(answer, metadata, "zh")

    assert "version **12**" in english
    assert "8,000 samples seen" in english
    assert "93.1%" in english
    assert "35.2 ms" in english
    assert "21.0 ms" in english
    assert "app-1-0" in english
    assert "模型版本 **12**" in chinese
    assert "35.2 ms" in chinese


def test_answer_markdown_without_metadata():
    answer = Answer("app-1-0", 7, [0.1] * 10, model_version=3, round_trip_ms=5.0, pipeline_ms=4.0, batch_size=1)

    assert "version **3** (n/a)" in views.answer_markdown(answer, None, "en")


@pytest.mark.parametrize(("diagnosis", "english", "chinese"), [
    (Diagnosis("kafka", "127.0.0.1:19092", "no answer within 3 s"), "Kafka at 127.0.0.1:19092 is unreachable",
     "无法连接 Kafka"),
    (Diagnosis("redis", "127.0.0.1:16379", "Connection refused"), "model store (Redis at 127.0.0.1:16379)",
     "无法连接模型仓库"),
    (Diagnosis("no_snapshot", "127.0.0.1:16379"), "no snapshot yet", "还没有快照"),
    (Diagnosis("inference", latest_version=4), "inference job is not answering", "推理作业没有回答"),
])
def test_diagnosis_message_names_component(diagnosis, english, chinese):
    assert english in views.diagnosis_message(diagnosis, True, 10.0, "en")
    assert chinese in views.diagnosis_message(diagnosis, True, 10.0, "zh")


def test_diagnosis_message_mentions_timeout_only_when_timed_out():
    diagnosis = Diagnosis("inference", latest_version=4)

    assert "No answer within 10 s." in views.diagnosis_message(diagnosis, True, 10.0, "en")
    assert "No answer within" not in views.diagnosis_message(Diagnosis("kafka", "x:1", "down"), False, 10.0, "en")
    assert "10 秒内没有收到答案" in views.diagnosis_message(diagnosis, True, 10.0, "zh")


def test_model_input_preview_keeps_pixels_square():
    image = np.zeros((28, 28), dtype=np.uint8)
    image[3, 5] = 200

    preview = views.model_input_preview(image, scale=4)

    assert preview.shape == (112, 112)
    assert preview.dtype == np.uint8
    assert (preview[12:16, 20:24] == 200).all()
    assert preview.sum() == 200 * 16


# Compare tab


def scored(version: int, samples: int, accuracy: float, label: int) -> ScoredVersion:
    probabilities = [0.0] * 10
    probabilities[label] = 1.0
    return ScoredVersion(version, {"samples_seen": samples, "accuracy": accuracy, "created_at": 1000.0},
                         probabilities)


def test_compare_table_rows():
    rows = [scored(1, 1000, 0.5, 7), scored(4, 9000, 0.95, 1), ScoredVersion(2, error="missing")]

    table = views.compare_table(rows, now=1060.0, language="en")

    assert list(table.columns) == ["version", "age", "samples seen", "prequential accuracy", "predicted",
                                   "probability"]
    assert table.iloc[0].tolist() == [1, "1 min ago", "1,000", "50.0%", "7", "100.0%"]
    assert table.iloc[1].tolist() == [4, "1 min ago", "9,000", "95.0%", "1", "100.0%"]
    assert "no longer stored" in table.iloc[2, 1]


def test_compare_table_chinese_headers():
    table = views.compare_table([scored(1, 1000, 0.5, 7)], now=1060.0, language="zh")

    assert list(table.columns)[:3] == ["版本", "距今", "已训练样本"]
    assert table.iloc[0, 1] == "1 分钟前"


def test_compare_figure_one_row_per_version():
    figure = views.compare_figure([scored(1, 1000, 0.5, 7), scored(4, 9000, 0.95, 1),
                                   ScoredVersion(2, error="missing")], "en")

    assert isinstance(figure, Figure)
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (2, 10)
    assert views.compare_figure([ScoredVersion(2, error="missing")], "en") is None


def test_version_choices():
    records = [{"version": 3, "samples_seen": 2000, "accuracy": 0.81}, {"version": 5, "samples_seen": 4000}]

    assert views.version_choices(records, "en") == [("v3 · 2,000 · 81.0%", 3), ("v5 · 4,000 · n/a", 5)]


# Training tab


def snapshot(version: int, samples: int, accuracy: float | None, at: float, **extra) -> dict:
    return {"version": version, "samples_seen": samples, "accuracy": accuracy, "created_at": at,
            "trained_until": at, **extra}


def test_training_rates_between_snapshots():
    records = [snapshot(1, 1000, 0.5, 100.0), snapshot(2, 3000, 0.8, 102.0), snapshot(3, 3500, 0.8, 112.0)]

    assert views.training_rates(records) == [(102.0, 1000.0), (112.0, 50.0)]


def test_training_rates_skip_restart_and_equal_times():
    # Version 3 starts over (fewer samples); version 5 has the same time as version 4.
    records = [snapshot(1, 1000, 0.5, 100.0), snapshot(2, 3000, 0.8, 102.0), snapshot(3, 500, 0.2, 110.0),
               snapshot(4, 1500, 0.4, 111.0), snapshot(5, 2500, 0.5, 111.0)]

    assert views.training_rates(records) == [(102.0, 1000.0), (111.0, 1000.0)]


def test_accuracy_figure_shows_drift_dip():
    accuracies = [0.5, 0.8, 0.9, 0.92, 0.1, 0.4, 0.7, 0.88]
    records = [snapshot(i + 1, (i + 1) * 1000, accuracy, 100.0 + i) for i, accuracy in enumerate(accuracies)]

    figure = views.accuracy_figure(records, "en")

    by_samples = figure.axes[0].lines[0]
    assert list(by_samples.get_xdata()) == [1000 * (i + 1) for i in range(8)]
    assert list(by_samples.get_ydata()) == accuracies
    assert len(figure.axes[1].lines[0].get_xdata()) == 8


def test_accuracy_figure_without_data_says_so():
    figure = views.accuracy_figure([snapshot(1, 1000, None, 100.0)], "en")

    texts = [item.get_text() for item in figure.axes[0].texts]
    assert texts == ["no data yet"]
    assert figure.axes[0].get_title() == "Prequential accuracy vs samples seen"


def test_figures_in_chinese_when_font_installed():
    figure = views.accuracy_figure([], "zh")

    if views.CJK_FONTS:
        assert figure.axes[0].get_title() == "前序准确率与已训练样本数"
    else:
        assert figure.axes[0].get_title() == "Prequential accuracy vs samples seen"


def test_throughput_figure_bars_per_second():
    stats = InferenceStats(window_s=10.0, count=6, requests_per_s=0.6, latency_ms={"p50": 5.0},
                           per_second=[0, 0, 0, 0, 0, 0, 0, 1, 2, 3])

    figure = views.throughput_figure([], stats, "en", 10.0)

    bars = figure.axes[1].patches
    assert [bar.get_height() for bar in bars] == stats.per_second
    assert figure.axes[1].get_title() == "Inference requests/s (last 10 s)"


def test_timeline_table_newest_first():
    records = [snapshot(1, 1000, 0.5, 100.0), snapshot(2, 3000, 0.8, 102.0, pinned=True)]

    table = views.timeline_table(records, now=160.0, language="en")

    assert table["version"].tolist() == [2, 1]
    assert table.iloc[0]["samples/s"] == "1,000"
    assert table.iloc[0]["pinned"] == "yes"
    assert table.iloc[1]["samples/s"] == ""
    assert table.iloc[0]["age"] == "58 s ago"


def test_snapshot_summary():
    records = [snapshot(1, 1000, 0.5, 100.0), snapshot(2, 3000, 0.8, 102.0)]

    assert views.snapshot_summary(records, 110.0, "en") == (
        "**2** snapshots shown, newest version **2**: 3,000 samples seen, prequential accuracy 80.0%, "
        "created 8 s ago.")
    assert views.snapshot_summary([], 110.0, "en").startswith("No snapshots yet")


def test_inference_summary():
    stats = InferenceStats(60.0, 120, 2.0, {"p50": 12.0, "p95": 30.5, "p99": 1500.0}, [2] * 60)

    summary = views.inference_summary(stats, "en")

    assert summary == ("**Inference, last 60 s:** answered 120, 2 requests/s, "
                       "latency p50 12.0 ms · p95 30.5 ms · p99 1.50 s.")
    assert "没有结果" in views.inference_summary(InferenceStats(60.0, 0, 0.0, {}, [0] * 60), "zh")


def test_dead_letter_summary():
    stats = DeadLetterStats(total=7, window_s=300.0,
                            recent={("onml.requests", "decode"): 2, ("onml.training", "decode"): 1})

    summary = views.dead_letter_summary(stats, "en")

    assert summary == ("**Dead-letter topic:** 7 messages stored; last 300 s: 2 from onml.requests (decode), "
                       "1 from onml.training (decode).")
    assert "无" in views.dead_letter_summary(DeadLetterStats(None, 300.0, {}), "zh")
