"""Baseline: the old design, a Flink job whose scalar map function runs one forward pass per record.

Kafka requests → ``map`` (decode, one forward pass on a batch of one, encode) → Kafka
results, with the same Flink settings, model weights and wire format as the inference
job. It loads the latest snapshot once at start and never swaps it.

``--runtime torch`` (the default) is the design onml replaces: PyFlink's process mode
and eager torch, one call per record. ``--runtime onnx`` keeps the one call per record
but runs the snapshot's ONNX model in ONNX Runtime, which shows how much of the gap is
the model runtime and how much is batching.

Run with ``python -m benchmarks.per_record_job``; the settings come from ``ONML_*``
variables like every onml process. For a malformed request the map function returns a
dead-letter message, which goes to the results topic, because a map function must
return one value per record.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from pathlib import Path

if __package__ in (None, ""):
    # Started as a script: make the project's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.datastream.functions import MapFunction, RuntimeContext

from shared.config import Config, load_config
from shared.flink import (
    STRING,
    absolute_paths,
    create_environment,
    kafka_string_sink,
    kafka_string_source,
    partial_path,
)
from shared.wire import WireError, decode_request, encode_dead_letter, encode_result, pixels_to_array

logger = logging.getLogger("onml.bench.per_record")

JOB_NAME = "onml-bench-per-record"
PACKAGE_DIR = Path(__file__).resolve().parent


class PerRecordPredictor(MapFunction):
    """Run one forward pass for each request."""

    def __init__(self, config: Config, runtime: str) -> None:
        self.config = config
        self.runtime = runtime

    def open(self, runtime_context: RuntimeContext) -> None:
        import torch

        from inference_job.predictor import load_model
        from shared.store import ModelStore

        # One thread per subtask, as the inference job sets it.
        torch.set_num_threads(1)
        self.model = load_model(ModelStore.from_config(self.config), runtime="torch" if self.runtime == "torch" else "auto")
        logger.info("per-record predictor serves snapshot version %d with %s", self.model.version, self.model.runtime)

    def map(self, value: str) -> str:
        try:
            request = decode_request(value)
        except WireError as error:
            return encode_dead_letter(self.config.request_topic, "per-record-decode", error.reason, value).decode()
        probabilities = self.model.predict(pixels_to_array([request.pixels]))[0]
        return encode_result(request.id, int(probabilities.argmax()), probabilities, self.model.version,
                             request.ts_ms, 1).decode()


def build_bench_archive(directory: Path) -> Path:
    """Zip the ``benchmarks`` package's Python files, so the workers can import this module by name."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "onml-bench.zip"
    partial = partial_path(archive)
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as bundle:
        for source in sorted(PACKAGE_DIR.glob("*.py")):
            bundle.write(source, f"benchmarks/{source.name}")
    partial.replace(archive)
    return archive


def build_job(env, config: Config, runtime: str) -> None:
    requests = kafka_string_source(env, config, config.request_topic, "per-record", "requests")
    results = requests.map(PerRecordPredictor(config, runtime), output_type=STRING).name("per-record-predictor")
    results.sink_to(kafka_string_sink(config, config.result_topic)).name("results")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the per-record baseline job (Kafka -> one forward pass per record -> Kafka).")
    parser.add_argument("--config", help="TOML config file (default: $ONML_CONFIG or ./onml.toml)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="model runtime: eager torch, as the replaced design (default), or ONNX Runtime")
    args = parser.parse_args(argv)

    config = absolute_paths(load_config(args.config))
    logger.info("starting %s with config %s", JOB_NAME, config.redacted())
    env = create_environment(config, JOB_NAME, resume=False)
    env.add_python_file(str(build_bench_archive(Path(config.var_dir) / "build")))
    build_job(env, config, args.runtime)
    env.execute(JOB_NAME)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
