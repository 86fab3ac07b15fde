"""Ceiling: the raw batched forward pass of the served model in one process, no Kafka, no Flink.

The model comes from :func:`inference_job.predictor.load_model`, the loader the inference
job uses, so the ceiling runs the same model on the same runtime. Inputs are uint8 images
already in memory: no decoding, no messaging.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from benchmarks.harness import progress_bar


def measure_ceiling(model: Any, images: np.ndarray, batch_sizes: Sequence[int], seconds_per_size: float = 2.0,
                    max_images_per_size: int = 2_000_000, threads: int = 1,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Return images/s of ``model.predict`` for each batch size.

    Each size runs for ``seconds_per_size`` or ``max_images_per_size`` images, whichever
    comes first, after three warm-up batches. torch runs on ``threads`` threads (the
    inference job sets 1 for each subtask); the previous setting is restored afterwards.
    """
    import torch

    if not batch_sizes:
        return []
    pool = np.ascontiguousarray(np.resize(images, (max(len(images), max(batch_sizes) * 2), *images.shape[1:])))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        with progress_bar(len(batch_sizes), "ceiling: batch sizes", progress, unit="size") as bar:
            for batch_size in batch_sizes:
                batches = [pool[start:start + batch_size]
                           for start in range(0, len(pool) - batch_size + 1, batch_size)]
                for batch in batches[:3]:
                    model.predict(batch)
                done = 0
                calls = 0
                started = time.perf_counter()
                elapsed = 0.0
                while elapsed < seconds_per_size and done < max_images_per_size:
                    model.predict(batches[calls % len(batches)])
                    calls += 1
                    done += batch_size
                    elapsed = time.perf_counter() - started
                rows.append({
                    "batch_size": batch_size,
                    "images": done,
                    "seconds": elapsed,
                    "images_per_s": done / elapsed if elapsed > 0 else None,
                    "ms_per_batch": elapsed * 1000.0 / calls if calls else None,
                    "threads": threads,
                })
                bar.update(1)
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def ceiling_at(rows: Sequence[dict[str, Any]], batch_size: int) -> float | None:
    """Return images/s of the row for ``batch_size``, or None if it was not measured."""
    return next((row["images_per_s"] for row in rows if row["batch_size"] == batch_size), None)
