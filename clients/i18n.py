"""English and Chinese text of the Gradio app.

Every string a person reads in the app comes from :data:`MESSAGES` through :func:`text`,
so both languages always carry the same set of keys (a unit test checks this).
"""

from __future__ import annotations

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"

# Radio choices as (label shown, value returned).
LANGUAGE_CHOICES = [("English", "en"), ("中文", "zh")]

MESSAGES: dict[str, dict[str, str]] = {
    # Page
    "title": {
        "en": "# onml: a digit classifier that learns online",
        "zh": "# onml：在线学习的手写数字识别",
    },
    "intro": {
        "en": ("A Flink job trains a small CNN from the Kafka training stream and stores a snapshot "
               "every few thousand samples. Another Flink job answers requests from the newest snapshot."),
        "zh": ("一个 Flink 作业从 Kafka 训练流中在线训练一个小型 CNN，每隔几千个样本保存一个快照；"
               "另一个 Flink 作业用最新的快照回答识别请求。"),
    },
    "language_label": {"en": "Language / 语言", "zh": "语言 / Language"},

    # Draw tab
    "draw_intro": {
        "en": ("Pick the brush (✎) on the left of the canvas, draw one digit, then press **Classify**. "
               "The drawing goes through Kafka to the inference job and back."),
        "zh": "先点画布左侧的画笔（✎），画一个数字，再点 **识别**。图像经 Kafka 发给推理作业，再从结果主题取回答案。",
    },
    "sketchpad_label": {"en": "Draw a digit (0–9)", "zh": "画一个数字（0–9）"},
    "classify_button": {"en": "Classify", "zh": "识别"},
    "model_input_label": {"en": "What the model sees (28×28)", "zh": "模型看到的图像（28×28）"},
    "probabilities_label": {"en": "Top probabilities", "zh": "最高的概率"},
    "draw_result_label": {"en": "Answer", "zh": "结果"},
    "empty_drawing": {
        "en": "Please draw a digit first: the canvas is empty, so nothing was sent.",
        "zh": "请先画一个数字：画布是空的，没有发送任何请求。",
    },
    "predicted_digit": {"en": "Predicted digit", "zh": "预测数字"},
    "answered_by": {
        "en": "Answered by model version **{version}** ({details}).",
        "zh": "由模型版本 **{version}** 回答（{details}）。",
    },
    "version_details": {
        "en": "{samples} samples seen, prequential accuracy {accuracy}",
        "zh": "已训练 {samples} 个样本，前序准确率 {accuracy}",
    },
    "latency": {
        "en": "Send → answer: **{round_trip}** (inside the inference job's pipeline: {pipeline}, batch of {batch}).",
        "zh": "发送 → 收到答案：**{round_trip}**（推理流水线内部：{pipeline}，批大小 {batch}）。",
    },
    "request_id": {"en": "Request id: `{request_id}`", "zh": "请求 id：`{request_id}`"},
    "timed_out": {
        "en": "No answer within {timeout} s.",
        "zh": "{timeout} 秒内没有收到答案。",
    },
    "down_kafka": {
        "en": "Kafka at {address} is unreachable ({error}). Start it with `onml stack up`.",
        "zh": "无法连接 Kafka（{address}）：{error}。请用 `onml stack up` 启动。",
    },
    "down_redis": {
        "en": "The model store (Redis at {address}) is unreachable: {error}. Start it with `onml stack up`.",
        "zh": "无法连接模型仓库（Redis，{address}）：{error}。请用 `onml stack up` 启动。",
    },
    "down_no_snapshot": {
        "en": ("The model store has no snapshot yet. Start the training job (`onml job run training`) "
               "and stream training data (`onml train`)."),
        "zh": "模型仓库里还没有快照。请启动训练作业（`onml job run training`）并发送训练数据（`onml train`）。",
    },
    "down_inference": {
        "en": ("The inference job is not answering: Kafka and the model store are up and snapshot version "
               "{version} exists. Start the job with `onml job run inference`, or check its log."),
        "zh": "推理作业没有回答：Kafka 和模型仓库都正常，且已有快照版本 {version}。"
              "请用 `onml job run inference` 启动推理作业，或查看它的日志。",
    },
    "send_failed": {
        "en": "Sending the request failed: {error}.",
        "zh": "发送请求失败：{error}。",
    },

    # Compare tab
    "compare_intro": {
        "en": ("The drawing from the **Draw** tab, scored by several stored snapshots directly in this app "
               "(read-only from the model store), so you see how the answer changed as training went on."),
        "zh": "用 **画数字** 页的图像，直接在本应用里用多个已存快照打分（只读模型仓库），看答案如何随训练变化。",
    },
    "versions_label": {"en": "Snapshot versions", "zh": "快照版本"},
    "refresh_versions_button": {"en": "Refresh version list", "zh": "刷新版本列表"},
    "compare_button": {"en": "Compare", "zh": "比较"},
    "compare_table_label": {"en": "Answers by version", "zh": "各版本的答案"},
    "compare_plot_label": {"en": "Probabilities by version", "zh": "各版本的概率"},
    "compare_no_versions": {
        "en": "The model store has no snapshots yet: train the model first.",
        "zh": "模型仓库里还没有快照：请先训练模型。",
    },
    "compare_pick_versions": {"en": "Select at least one version.", "zh": "请至少选择一个版本。"},
    "compare_version_missing": {
        "en": "version {version} is no longer stored (dropped by retention)",
        "zh": "版本 {version} 已不在仓库中（已按保留策略删除）",
    },
    "compare_version_failed": {
        "en": "version {version} could not be loaded: {error}",
        "zh": "版本 {version} 无法加载：{error}",
    },
    "compare_done": {
        "en": "Scored by {count} versions.",
        "zh": "已用 {count} 个版本打分。",
    },
    "column_version": {"en": "version", "zh": "版本"},
    "column_age": {"en": "age", "zh": "距今"},
    "column_samples": {"en": "samples seen", "zh": "已训练样本"},
    "column_accuracy": {"en": "prequential accuracy", "zh": "前序准确率"},
    "column_predicted": {"en": "predicted", "zh": "预测"},
    "column_confidence": {"en": "probability", "zh": "概率"},
    "column_created": {"en": "created", "zh": "创建时间"},
    "column_pinned": {"en": "pinned", "zh": "已固定"},
    "column_rate": {"en": "samples/s", "zh": "样本/秒"},
    "pinned_yes": {"en": "yes", "zh": "是"},

    # Training tab
    "training_intro": {
        "en": ("Refreshed every {interval} s from snapshot metadata in the model store and from the results "
               "and dead-letter topics. A label drift (`onml train --drift-at N`) shows as a dip and recovery "
               "of the accuracy curve."),
        "zh": "每 {interval} 秒根据模型仓库里的快照元数据以及结果主题和死信主题刷新。"
              "标签漂移（`onml train --drift-at N`）会让准确率曲线先下降再回升。",
    },
    "accuracy_plot_label": {"en": "Prequential accuracy", "zh": "前序准确率"},
    "throughput_plot_label": {"en": "Throughput", "zh": "吞吐量"},
    "timeline_label": {"en": "Snapshot timeline (newest first)", "zh": "快照时间线（最新在前）"},
    "inference_stats_label": {"en": "Inference and dead letters", "zh": "推理与死信"},
    "plot_accuracy_vs_samples": {"en": "Prequential accuracy vs samples seen", "zh": "前序准确率与已训练样本数"},
    "plot_accuracy_vs_time": {"en": "Prequential accuracy over time", "zh": "前序准确率随时间变化"},
    "plot_training_rate": {"en": "Training samples/s (between snapshots)", "zh": "训练速度（样本/秒，相邻快照之间）"},
    "plot_requests_rate": {"en": "Inference requests/s (last {window} s)", "zh": "推理请求/秒（最近 {window} 秒）"},
    "axis_samples": {"en": "samples seen", "zh": "已训练样本数"},
    "axis_accuracy": {"en": "accuracy", "zh": "准确率"},
    "axis_time": {"en": "time", "zh": "时间"},
    "axis_rate": {"en": "samples/s", "zh": "样本/秒"},
    "axis_requests_rate": {"en": "requests/s", "zh": "请求/秒"},
    "axis_seconds_ago": {"en": "seconds ago", "zh": "秒前"},
    "plot_no_data": {"en": "no data yet", "zh": "暂无数据"},
    "no_snapshots": {
        "en": "No snapshots yet: start the training job and stream training data.",
        "zh": "还没有快照：请启动训练作业并发送训练数据。",
    },
    "store_unreachable": {
        "en": "The model store is unreachable: {error}",
        "zh": "无法连接模型仓库：{error}",
    },
    "kafka_unreachable_short": {
        "en": "Kafka is unreachable: {error}",
        "zh": "无法连接 Kafka：{error}",
    },
    "snapshot_summary": {
        "en": "**{count}** snapshots shown, newest version **{version}**: {samples} samples seen, "
              "prequential accuracy {accuracy}, created {age}.",
        "zh": "共显示 **{count}** 个快照，最新版本 **{version}**：已训练 {samples} 个样本，前序准确率 {accuracy}，创建于{age}。",
    },
    "inference_summary": {
        "en": "**Inference, last {window} s:** answered {count}, {rate} requests/s, "
              "latency p50 {p50} · p95 {p95} · p99 {p99}.",
        "zh": "**推理（最近 {window} 秒）：** 已回答 {count} 个，{rate} 请求/秒，延迟 p50 {p50} · p95 {p95} · p99 {p99}。",
    },
    "inference_none": {
        "en": "**Inference, last {window} s:** no results.",
        "zh": "**推理（最近 {window} 秒）：** 没有结果。",
    },
    "dead_letter_summary": {
        "en": "**Dead-letter topic:** {total} messages stored; last {window} s: {recent}.",
        "zh": "**死信主题：** 共存有 {total} 条消息；最近 {window} 秒：{recent}。",
    },
    "dead_letter_none_recent": {"en": "none", "zh": "无"},
    "dead_letter_source": {"en": "{count} from {topic} ({stage})", "zh": "{topic}（{stage}）{count} 条"},

    # Units and ages
    "not_available": {"en": "n/a", "zh": "无"},
    "age_seconds": {"en": "{value} s ago", "zh": "{value} 秒前"},
    "age_minutes": {"en": "{value} min ago", "zh": "{value} 分钟前"},
    "age_hours": {"en": "{value} h ago", "zh": "{value} 小时前"},
    "age_days": {"en": "{value} d ago", "zh": "{value} 天前"},
}


def normalize_language(language: str | None) -> str:
    """Return ``language`` if the app has text for it, else the default language."""
    return language if language in LANGUAGES else DEFAULT_LANGUAGE


def text(key: str, language: str | None, **fields: object) -> str:
    """Return the message ``key`` in ``language``, with ``fields`` filled in.

    Raises KeyError for an unknown key, so a typo fails in tests instead of showing a blank.
    """
    template = MESSAGES[key][normalize_language(language)]
    return template.format(**fields) if fields else template
