"""The wire format of every Kafka message onml reads or writes (format version 1).

Messages are UTF-8 JSON objects encoded with orjson. An image travels as its 784 raw
pixels (28×28, uint8, row-major, white ink on black as in MNIST) in standard base64,
1,048 characters instead of a JSON list of 784 numbers, which is about ten times
cheaper to decode. docs/wire-format.md describes every field.

Decoders never trust their input: anything malformed raises :class:`WireError` with a
short reason, which the jobs put on the dead-letter topic beside the original bytes.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

FORMAT_VERSION = 1
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
MAX_ID_LENGTH = 128


class WireError(ValueError):
    """A message does not follow the wire format; ``reason`` names the rule it broke."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def now_ms() -> float:
    """Return wall-clock time in milliseconds since the epoch, as sent in ``ts`` fields."""
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class TrainingRecord:
    id: str
    ts_ms: float
    label: int
    pixels: bytes


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    ts_ms: float
    pixels: bytes


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    label: int
    probabilities: list[float]
    model_version: int
    request_ts_ms: float
    result_ts_ms: float
    batch_size: int


# Encoding


def _encode_pixels(pixels: bytes | np.ndarray) -> str:
    if isinstance(pixels, np.ndarray):
        if pixels.dtype != np.uint8 or pixels.size != IMAGE_BYTES:
            raise ValueError(
                f"image must be {IMAGE_BYTES} uint8 pixels, got {pixels.size} of {pixels.dtype}"
            )
        pixels = pixels.tobytes()
    if len(pixels) != IMAGE_BYTES:
        raise ValueError(f"image must be {IMAGE_BYTES} bytes, got {len(pixels)}")
    return base64.b64encode(pixels).decode("ascii")


def encode_training(record_id: str, label: int, pixels: bytes | np.ndarray, ts_ms: float | None = None) -> bytes:
    return orjson.dumps({
        "v": FORMAT_VERSION,
        "id": record_id,
        "ts": now_ms() if ts_ms is None else ts_ms,
        "label": int(label),
        "img": _encode_pixels(pixels),
    })


def encode_request(request_id: str, pixels: bytes | np.ndarray, ts_ms: float | None = None) -> bytes:
    return orjson.dumps({
        "v": FORMAT_VERSION,
        "id": request_id,
        "ts": now_ms() if ts_ms is None else ts_ms,
        "img": _encode_pixels(pixels),
    })


def _result_fields(request_id: str, label: int, probabilities: list[float], model_version: int,
                   request_ts_ms: float, result_ts_ms: float, batch_size: int) -> dict[str, Any]:
    """Return a result message's fields; the caller has rounded the probabilities to 5 places."""
    return {
        "v": FORMAT_VERSION,
        "id": request_id,
        "label": label,
        "probs": probabilities,
        "model_version": model_version,
        "request_ts": request_ts_ms,
        "result_ts": result_ts_ms,
        "batch_size": batch_size,
    }


def encode_result(
    request_id: str,
    label: int,
    probabilities: Sequence[float],
    model_version: int,
    request_ts_ms: float,
    batch_size: int,
    result_ts_ms: float | None = None,
) -> bytes:
    return orjson.dumps(_result_fields(
        request_id, int(label), [round(float(p), 5) for p in probabilities], int(model_version), request_ts_ms,
        now_ms() if result_ts_ms is None else result_ts_ms, int(batch_size),
    ))


def encode_results(
    requests: Sequence[Request],
    probabilities: np.ndarray,
    model_version: int,
    result_ts_ms: float | None = None,
) -> list[str]:
    """Encode the results of one batch as text, one message per request, in request order.

    Gives the same messages as :func:`encode_result` for each row, with the rounding and
    the conversion to Python numbers done once for the whole ``(n, 10)`` array.
    """
    if len(probabilities) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(probabilities)} rows of probabilities")
    labels = probabilities.argmax(axis=1).tolist()
    rounded = np.round(probabilities.astype(np.float64), 5).tolist()
    result_ts = now_ms() if result_ts_ms is None else result_ts_ms
    version = int(model_version)
    batch_size = len(requests)
    return [
        orjson.dumps(_result_fields(request.id, label, probs, version, request.ts_ms, result_ts, batch_size)).decode()
        for request, label, probs in zip(requests, labels, rounded)
    ]


def encode_dead_letter(source_topic: str, stage: str, reason: str, payload: bytes | str) -> bytes:
    """Wrap a rejected message with the reason; the original bytes are kept, base64 if not UTF-8."""
    if isinstance(payload, str):
        payload_text, payload_encoding = payload, "utf-8"
    else:
        try:
            payload_text, payload_encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload_text, payload_encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return orjson.dumps({
        "v": FORMAT_VERSION,
        "source_topic": source_topic,
        "stage": stage,
        "reason": reason,
        "payload": payload_text,
        "payload_encoding": payload_encoding,
        "ts": now_ms(),
    })


# Decoding


def _parse_object(message: bytes | str) -> dict[str, Any]:
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError as error:
        raise WireError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise WireError(f"expected a JSON object, got {type(value).__name__}")
    version = value.get("v")
    if type(version) is not int or version != FORMAT_VERSION:
        raise WireError(f"unsupported format version {version!r}, expected {FORMAT_VERSION}")
    return value


def _field_id(value: dict[str, Any]) -> str:
    record_id = value.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise WireError("missing or empty 'id' (expected a non-empty string)")
    if len(record_id) > MAX_ID_LENGTH:
        raise WireError(f"'id' is {len(record_id)} characters, the maximum is {MAX_ID_LENGTH}")
    return record_id


def _field_ts(value: dict[str, Any]) -> float:
    ts = value.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts < 0:
        raise WireError(f"invalid 'ts' {ts!r} (expected milliseconds since the epoch)")
    return float(ts)


def _field_pixels(value: dict[str, Any]) -> bytes:
    encoded = value.get("img")
    if not isinstance(encoded, str):
        raise WireError("missing 'img' (expected base64 of 784 uint8 pixels)")
    try:
        pixels = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        # Non-ASCII characters raise a plain ValueError rather than binascii.Error.
        raise WireError(f"'img' is not valid base64: {error}") from None
    if len(pixels) != IMAGE_BYTES:
        raise WireError(f"'img' contains {len(pixels)} bytes, expected {IMAGE_BYTES} (28x28 uint8)")
    return pixels


def decode_training(message: bytes | str) -> TrainingRecord:
    value = _parse_object(message)
    label = value.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        raise WireError(f"invalid 'label' {label!r} (expected an integer from 0 to 9)")
    return TrainingRecord(_field_id(value), _field_ts(value), label, _field_pixels(value))


def decode_request(message: bytes | str) -> Request:
    value = _parse_object(message)
    return Request(_field_id(value), _field_ts(value), _field_pixels(value))


def decode_result(message: bytes | str) -> Result:
    value = _parse_object(message)
    try:
        return Result(
            id=_field_id(value),
            label=int(value["label"]),
            probabilities=[float(p) for p in value["probs"]],
            model_version=int(value["model_version"]),
            request_ts_ms=float(value["request_ts"]),
            result_ts_ms=float(value["result_ts"]),
            batch_size=int(value["batch_size"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise WireError(f"invalid result message: {error!r}") from None


def decode_dead_letter(message: bytes | str) -> dict[str, Any]:
    value = _parse_object(message)
    for key in ("source_topic", "stage", "reason", "payload"):
        if not isinstance(value.get(key), str):
            raise WireError(f"dead-letter message lacks string field {key!r}")
    return value


def pixels_to_array(pixels_list: Sequence[bytes]) -> np.ndarray:
    """Stack raw 784-byte images into a ``(n, 28, 28)`` uint8 array without per-pixel work."""
    flat = np.frombuffer(b"".join(pixels_list), dtype=np.uint8)
    return flat.reshape(len(pixels_list), IMAGE_SIDE, IMAGE_SIDE)
