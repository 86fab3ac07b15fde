"""Baseline: an ordinary HTTP inference service, FastAPI on uvicorn, one forward pass per request.

``POST /predict`` takes a request in the wire format (``{"v": 1, "id", "ts", "img"}``,
the image as base64 of 784 uint8 pixels) and returns the result message the inference
job would write. The endpoint is a plain ``def``, so FastAPI runs it on its thread
pool, the usual pattern for blocking work. One uvicorn worker process serves it; the
model is the one the inference job serves (:func:`inference_job.predictor.load_model`).

Run with ``python -m benchmarks.http_service --port N``; it listens on 127.0.0.1 only
and stops on SIGTERM or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import binascii
import logging
import os
import signal
import threading
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from shared.wire import IMAGE_BYTES, MAX_ID_LENGTH, encode_result, pixels_to_array

logger = logging.getLogger("onml.bench.http_service")

LOOPBACK = "127.0.0.1"


class PredictRequest(BaseModel):
    """A request in the wire format; ``img`` is base64 of 784 uint8 pixels."""

    # FastAPI resolves the endpoint's annotations in this module's globals, so the model
    # must live at module level.
    v: int = Field(1, ge=1, le=1)
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    ts: float = Field(ge=0)
    img: str


def create_app(model: Any) -> FastAPI:
    """Build the FastAPI app: ``POST /predict`` runs ``model`` on one image, ``GET /health`` reports readiness."""
    app = FastAPI(title="onml bench HTTP baseline")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": model.version}

    @app.post("/predict")
    def predict(request: PredictRequest) -> Response:
        try:
            pixels = binascii.a2b_base64(request.img, strict_mode=True)
        except (binascii.Error, ValueError) as error:
            raise HTTPException(status_code=422, detail=f"'img' is not valid base64: {error}") from None
        if len(pixels) != IMAGE_BYTES:
            raise HTTPException(status_code=422, detail=f"invalid 'img': {len(pixels)} bytes, expected {IMAGE_BYTES} (28x28 uint8)")
        probabilities = model.predict(pixels_to_array([pixels]))[0]
        body = encode_result(request.id, int(probabilities.argmax()), probabilities, model.version, request.ts, 1)
        return Response(content=body, media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HTTP inference baseline (FastAPI + uvicorn) on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this many seconds (default 1800)")
    args = parser.parse_args(argv)

    import torch
    import uvicorn

    from inference_job.predictor import load_model
    from shared.config import load_config
    from shared.store import ModelStore

    # One thread per inference, as the inference job sets it for each subtask.
    torch.set_num_threads(1)
    model = load_model(ModelStore.from_config(load_config()))
    timer = threading.Timer(args.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    logger.info("serving snapshot version %d on http://%s:%d/predict", model.version, LOOPBACK, args.port)
    uvicorn.run(create_app(model), host=LOOPBACK, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
