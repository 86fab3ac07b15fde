"""Tests of the wire format: round trips and every rejection path of the decoders."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from shared import wire
from shared.wire import WireError


def _pixels(seed: int = 0) -> bytes:
    """Return 784 random pixel bytes that use the whole 0–255 range."""
    return np.random.default_rng(seed).integers(0, 256, size=784, dtype=np.uint8).tobytes()


def _valid_training() -> dict:
    return {"v": 1, "id": "t-1", "ts": 1_700_000_000_000.5, "label": 7, "img": base64.b64encode(_pixels()).decode()}


def _valid_request() -> dict:
    return {"v": 1, "id": "r-1", "ts": 1_700_000_000_000.5, "img": base64.b64encode(_pixels()).decode()}


# Round trips


def test_training_record_round_trip():
    pixels = _pixels(1)

    record = wire.decode_training(wire.encode_training("rec-9", 3, pixels, ts_ms=1234.5))

    assert record.id == "rec-9"
    assert record.label == 3
    assert record.ts_ms == 1234.5
    assert record.pixels == pixels


def test_training_encode_accepts_array():
    image = np.frombuffer(_pixels(2), dtype=np.uint8).reshape(28, 28)

    record = wire.decode_training(wire.encode_training("a", 0, image, ts_ms=1.0))

    assert record.pixels == image.tobytes()


def test_training_encode_default_ts_is_now():
    before = wire.now_ms()
    record = wire.decode_training(wire.encode_training("a", 1, _pixels()))
    after = wire.now_ms()

    assert before <= record.ts_ms <= after


def test_request_round_trip():
    pixels = _pixels(3)

    request = wire.decode_request(wire.encode_request("req-1", pixels, ts_ms=99.0))

    assert request.id == "req-1"
    assert request.ts_ms == 99.0
    assert request.pixels == pixels


def test_request_decodes_from_str():
    message = wire.encode_request("req-2", _pixels(), ts_ms=5.0).decode("utf-8")

    assert wire.decode_request(message).id == "req-2"


def test_result_round_trip():
    probabilities = [0.1, 0.05, 0.05, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]

    result = wire.decode_result(
        wire.encode_result("req-3", 3, probabilities, model_version=12, request_ts_ms=10.0,
                           batch_size=64, result_ts_ms=25.0)
    )

    assert result.id == "req-3"
    assert result.label == 3
    assert result.probabilities == pytest.approx(probabilities, abs=1e-5)
    assert result.model_version == 12
    assert result.request_ts_ms == 10.0
    assert result.result_ts_ms == 25.0
    assert result.batch_size == 64


def test_result_probabilities_rounded_to_5_places():
    probabilities = [1 / 3] * 10

    message = wire.encode_result("r", 0, probabilities, 1, 0.0, 1, result_ts_ms=0.0)

    assert orjson.loads(message)["probs"][0] == 0.33333


def test_result_missing_field_is_rejected():
    value = orjson.loads(wire.encode_result("r", 0, [0.1] * 10, 1, 0.0, 1, result_ts_ms=0.0))
    del value["model_version"]

    with pytest.raises(WireError) as caught:
        wire.decode_result(orjson.dumps(value))

    assert "model_version" in caught.value.reason


def test_dead_letter_keeps_utf8_payload():
    payload = '{"v": 1, "id": "ü"'.encode("utf-8")

    letter = wire.decode_dead_letter(wire.encode_dead_letter("onml.requests", "decode", "not valid JSON", payload))

    assert letter["source_topic"] == "onml.requests"
    assert letter["stage"] == "decode"
    assert letter["reason"] == "not valid JSON"
    assert letter["payload_encoding"] == "utf-8"
    assert letter["payload"].encode("utf-8") == payload


def test_dead_letter_keeps_str_payload():
    letter = wire.decode_dead_letter(wire.encode_dead_letter("t", "s", "r", "plain text"))

    assert letter["payload"] == "plain text"
    assert letter["payload_encoding"] == "utf-8"


def test_dead_letter_base64_for_non_utf8():
    payload = b"\xff\xfe\x00binary\x80"

    letter = wire.decode_dead_letter(wire.encode_dead_letter("t", "s", "r", payload))

    assert letter["payload_encoding"] == "base64"
    assert base64.b64decode(letter["payload"]) == payload


def test_dead_letter_missing_reason_is_rejected():
    value = orjson.loads(wire.encode_dead_letter("t", "s", "r", "p"))
    del value["reason"]

    with pytest.raises(WireError):
        wire.decode_dead_letter(orjson.dumps(value))


# Encoder input checks


@pytest.mark.parametrize("size", [783, 785, 0])
def test_encode_rejects_wrong_byte_count(size):
    with pytest.raises(ValueError):
        wire.encode_request("a", bytes(size), ts_ms=0.0)


@pytest.mark.parametrize("shape", [(27, 28), (28, 29), (784, 2)])
def test_encode_rejects_wrong_array_size(shape):
    with pytest.raises(ValueError):
        wire.encode_training("a", 0, np.zeros(shape, dtype=np.uint8), ts_ms=0.0)


def test_encode_rejects_non_uint8_array():
    with pytest.raises(ValueError):
        wire.encode_request("a", np.zeros((28, 28), dtype=np.float32), ts_ms=0.0)


# Decoder rejections shared by training records and requests

DECODERS = {"training": (wire.decode_training, _valid_training), "request": (wire.decode_request, _valid_request)}


def _rejection_reason(kind: str, message: bytes | str) -> str:
    decode, _ = DECODERS[kind]
    with pytest.raises(WireError) as caught:
        decode(message)
    return caught.value.reason


def _with(kind: str, **changes) -> bytes:
    _, valid = DECODERS[kind]
    value = valid()
    value.update(changes)
    return orjson.dumps(value)


def _without(kind: str, key: str) -> bytes:
    _, valid = DECODERS[kind]
    value = valid()
    del value[key]
    return orjson.dumps(value)


@pytest.mark.parametrize("kind", DECODERS)
def test_valid_message_is_accepted(kind):
    decode, valid = DECODERS[kind]

    decoded = decode(orjson.dumps(valid()))

    assert decoded.pixels == _pixels()


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("message", [b"", b"{", b"not json", b"\xff\xfe", "{'v': 1}"])
def test_non_json_is_rejected(kind, message):
    reason = _rejection_reason(kind, message)

    assert "JSON" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("message", [b"[]", b"1", b'"text"', b"null", b"[1, 2]"])
def test_non_object_is_rejected(kind, message):
    reason = _rejection_reason(kind, message)

    assert "object" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("version", [0, 2, "1", None, [1]])
def test_wrong_version_is_rejected(kind, version):
    reason = _rejection_reason(kind, _with(kind, v=version))

    assert "version" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_missing_version_is_rejected(kind):
    reason = _rejection_reason(kind, _without(kind, "v"))

    assert "version" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_boolean_version_is_rejected(kind):
    reason = _rejection_reason(kind, _with(kind, v=True))

    assert "version" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("record_id", ["", None, 5, ["a"], {"a": 1}])
def test_bad_id_is_rejected(kind, record_id):
    reason = _rejection_reason(kind, _with(kind, id=record_id))

    assert "'id'" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_missing_id_is_rejected(kind):
    reason = _rejection_reason(kind, _without(kind, "id"))

    assert "'id'" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_id_of_max_length_is_accepted(kind):
    decode, _ = DECODERS[kind]
    record_id = "x" * wire.MAX_ID_LENGTH

    assert decode(_with(kind, id=record_id)).id == record_id


@pytest.mark.parametrize("kind", DECODERS)
def test_too_long_id_is_rejected(kind):
    reason = _rejection_reason(kind, _with(kind, id="x" * (wire.MAX_ID_LENGTH + 1)))

    assert "'id'" in reason
    assert str(wire.MAX_ID_LENGTH) in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("ts", [True, False, -1, -0.5, "1700000000000", None, [1]])
def test_bad_ts_is_rejected(kind, ts):
    reason = _rejection_reason(kind, _with(kind, ts=ts))

    assert "'ts'" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_missing_ts_is_rejected(kind):
    reason = _rejection_reason(kind, _without(kind, "ts"))

    assert "'ts'" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_integer_ts_becomes_float(kind):
    decode, _ = DECODERS[kind]

    ts = decode(_with(kind, ts=0)).ts_ms

    assert ts == 0.0
    assert isinstance(ts, float)


@pytest.mark.parametrize("kind", DECODERS)
def test_missing_img_is_rejected(kind):
    reason = _rejection_reason(kind, _without(kind, "img"))

    assert "'img'" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("img", [None, 5, [0] * 784])
def test_non_string_img_is_rejected(kind, img):
    reason = _rejection_reason(kind, _with(kind, img=img))

    assert "'img'" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize(
    "img",
    [
        "@@@@" * 262,
        base64.b64encode(_pixels()).decode()[:-1],  # truncated: padding is incomplete
        base64.b64encode(_pixels()).decode().replace("=", "") + "A",
        base64.b64encode(_pixels()).decode() + "\n",  # strict mode rejects trailing data
        base64.urlsafe_b64encode(bytes([0xFB, 0xFF] * 392)).decode(),  # '-' and '_' are not standard base64
    ],
)
def test_non_base64_img_is_rejected(kind, img):
    reason = _rejection_reason(kind, _with(kind, img=img))

    assert "base64" in reason


@pytest.mark.parametrize("kind", DECODERS)
def test_non_ascii_img_is_rejected(kind):
    reason = _rejection_reason(kind, _with(kind, img="é" * 1048))

    assert "'img'" in reason


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("size", [0, 783, 785, 784 * 2])
def test_wrong_pixel_count_is_rejected(kind, size):
    img = base64.b64encode(bytes(size)).decode()

    reason = _rejection_reason(kind, _with(kind, img=img))

    assert str(size) in reason
    assert "784" in reason


# Labels


@pytest.mark.parametrize("label", range(10))
def test_every_label_is_accepted(label):
    assert wire.decode_training(_with("training", label=label)).label == label


@pytest.mark.parametrize("label", [-1, 10, 255, True, False, 3.0, 3.5, "3", None, [3]])
def test_bad_label_is_rejected(label):
    reason = _rejection_reason("training", _with("training", label=label))

    assert "'label'" in reason


def test_missing_label_is_rejected():
    reason = _rejection_reason("training", _without("training", "label"))

    assert "'label'" in reason


def test_request_ignores_label():
    request = wire.decode_request(_with("request", label=99))

    assert request.id == "r-1"


# WireError


def test_wire_error_reason_matches_message():
    with pytest.raises(WireError) as caught:
        wire.decode_request(b"[]")

    assert caught.value.reason
    assert str(caught.value) == caught.value.reason


def test_wire_error_is_value_error():
    assert issubclass(WireError, ValueError)


# pixels_to_array


def test_pixels_to_array_shape_and_dtype():
    images = [_pixels(seed) for seed in range(3)]

    array = wire.pixels_to_array(images)

    assert array.shape == (3, 28, 28)
    assert array.dtype == np.uint8


def test_pixels_to_array_keeps_row_major_order():
    images = [_pixels(seed) for seed in range(3)]

    array = wire.pixels_to_array(images)

    for index, pixels in enumerate(images):
        assert array[index].tobytes() == pixels
    assert array[1, 0, 1] == images[1][1]
    assert array[1, 1, 0] == images[1][28]


def test_pixels_to_array_empty_list():
    array = wire.pixels_to_array([])

    assert array.shape == (0, 28, 28)


def test_pixels_to_array_rejects_short_image():
    with pytest.raises(ValueError):
        wire.pixels_to_array([_pixels(), bytes(783)])


def test_encode_results_row_mismatch():
    from shared.wire import Request, encode_results

    requests = [Request("a", 1.0, bytes(784))]
    with pytest.raises(ValueError, match="1 requests but 2 rows"):
        encode_results(requests, np.full((2, 10), 0.1, dtype=np.float32), 1)
