"""Tests of model-input scaling and of turning free-hand drawings into MNIST-style images.

The drawings are made here with PIL: a ring for a '0' and a thick vertical bar for a '1',
dark ink on white paper, at different positions, sizes and stroke widths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from shared import wire
from shared.preprocess import INK_THRESHOLD, EmptyDrawingError, drawing_to_mnist, to_model_input

CANVAS = 280

# The usual MNIST normalisation constants (training-pixel mean and standard deviation on the
# [0, 1] scale), written out here so that a change to them in shared/preprocess.py fails a test.
MEAN = 0.1307
STD = 0.3081


# Drawings


def draw_zero(centre=(140, 140), height=200, width=20, canvas=CANVAS) -> Image.Image:
    """Return a '0': an upright elliptical ring of ``height`` px, dark on white, mode L."""
    image = Image.new("L", (canvas, canvas), 255)
    x, y = centre
    half_height = height / 2
    half_width = height * 0.35
    ImageDraw.Draw(image).ellipse(
        (x - half_width, y - half_height, x + half_width, y + half_height), outline=0, width=width
    )
    return image


def draw_one(centre=(140, 140), height=200, width=24, canvas=CANVAS) -> Image.Image:
    """Return a '1': a vertical bar of ``height`` by ``width`` px, dark on white, mode L."""
    image = Image.new("L", (canvas, canvas), 255)
    x, y = centre
    ImageDraw.Draw(image).rectangle(
        (x - width / 2, y - height / 2, x + width / 2, y + height / 2), fill=0
    )
    return image


def as_rgba_strokes(grey: np.ndarray) -> np.ndarray:
    """Turn dark-on-white grey levels into black strokes on a transparent canvas, as a sketchpad layer."""
    rgba = np.zeros(grey.shape + (4,), dtype=np.uint8)
    rgba[..., 3] = 255 - grey
    return rgba


def ink_box(image: np.ndarray) -> tuple[int, int]:
    """Return the height and width of the box around pixels brighter than the ink threshold."""
    rows = np.flatnonzero((image > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((image > INK_THRESHOLD).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64)
    ys, xs = np.indices(image.shape)
    return float((ys * weights).sum() / weights.sum()), float((xs * weights).sum() / weights.sum())


def border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0, :], image[-1, :], image[:, 0], image[:, -1]])


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.float64) - second.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def zero_grey() -> np.ndarray:
    return np.asarray(draw_zero())


@pytest.fixture(scope="module")
def zero_reference(zero_grey) -> np.ndarray:
    return drawing_to_mnist(zero_grey)


# to_model_input


def test_model_input_shape_and_dtype():
    images = np.zeros((5, 28, 28), dtype=np.uint8)

    batch = to_model_input(images)

    assert batch.shape == (5, 1, 28, 28)
    assert batch.dtype == torch.float32


def test_model_input_accepts_flat_images():
    images = np.arange(2 * 784, dtype=np.int64).astype(np.uint8).reshape(2, 784)

    flat = to_model_input(images)
    square = to_model_input(images.reshape(2, 28, 28))

    assert flat.shape == (2, 1, 28, 28)
    assert torch.equal(flat, square)


@pytest.mark.parametrize("pixel", [0, 1, 128, 254, 255])
def test_model_input_normalisation(pixel):
    images = np.full((1, 28, 28), pixel, dtype=np.uint8)

    batch = to_model_input(images)

    expected = (pixel / 255.0 - MEAN) / STD
    assert batch.min().item() == pytest.approx(expected, abs=1e-5)
    assert batch.max().item() == pytest.approx(expected, abs=1e-5)


def test_model_input_keeps_pixel_positions():
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 3, 17] = 255

    batch = to_model_input(images)

    assert torch.argmax(batch[0, 0]).item() == 3 * 28 + 17


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int8, np.uint16, bool])
def test_model_input_rejects_non_uint8(dtype):
    with pytest.raises(TypeError):
        to_model_input(np.zeros((1, 28, 28), dtype=dtype))


def test_model_input_accepts_read_only_view():
    pixels = bytes(range(256)) * 3 + bytes(16)
    images = wire.pixels_to_array([pixels])
    assert not images.flags.writeable

    batch = to_model_input(images)

    assert batch[0, 0, 0, 1].item() == pytest.approx((1 / 255.0 - MEAN) / STD, abs=1e-5)


# drawing_to_mnist: output properties


def check_mnist_style(image: np.ndarray) -> None:
    """Assert the MNIST layout: 28×28 uint8, white ink, 20 px box, centred by mass, black border."""
    assert image.shape == (28, 28)
    assert image.dtype == np.uint8
    assert image.max() > 127

    height, width = ink_box(image)
    assert 19 <= max(height, width) <= 21

    centre_y, centre_x = centre_of_mass(image)
    assert abs(centre_y - 14) <= 1.0
    assert abs(centre_x - 14) <= 1.0

    assert border(image).max() <= 5


@pytest.mark.parametrize(
    "drawing",
    [
        pytest.param(lambda: draw_zero(), id="zero-centre"),
        pytest.param(lambda: draw_zero(centre=(40, 40), height=60, width=6), id="zero-small-corner"),
        pytest.param(lambda: draw_zero(centre=(235, 60), height=80, width=3), id="zero-thin-stroke"),
        pytest.param(lambda: draw_zero(height=40, width=16), id="zero-thick-stroke"),
        pytest.param(lambda: draw_zero(height=270, width=14), id="zero-whole-canvas"),
        pytest.param(lambda: draw_one(), id="one-centre"),
        pytest.param(lambda: draw_one(centre=(250, 240), height=50, width=6), id="one-small-corner"),
        pytest.param(lambda: draw_one(height=272, width=30), id="one-whole-canvas"),
    ],
)
def test_drawing_becomes_mnist_style(drawing):
    image = drawing_to_mnist(np.asarray(drawing()))

    check_mnist_style(image)


def test_one_keeps_its_aspect_ratio():
    image = drawing_to_mnist(np.asarray(draw_one(height=200, width=24)))

    height, width = ink_box(image)
    assert 19 <= height <= 21
    assert width <= 5


def test_zero_has_dark_hole(zero_reference):
    assert zero_reference[14, 14] <= INK_THRESHOLD


def test_position_does_not_change_result():
    centre = drawing_to_mnist(np.asarray(draw_zero(centre=(140, 140), height=100, width=10)))
    corner = drawing_to_mnist(np.asarray(draw_zero(centre=(55, 225), height=100, width=10)))

    assert mean_abs_difference(centre, corner) < 1.0


def test_size_does_not_change_result():
    # The stroke width scales with the size, so both rings have the same shape.
    large = drawing_to_mnist(np.asarray(draw_zero(height=250, width=25)))
    small = drawing_to_mnist(np.asarray(draw_zero(centre=(50, 50), height=60, width=6)))

    assert mean_abs_difference(large, small) < 5.0


def test_shifted_digit_exceeds_threshold(zero_reference):
    # The closeness bound in the two tests above is tight enough to catch a one-pixel shift.
    shifted = np.roll(zero_reference, 1, axis=1)

    assert mean_abs_difference(zero_reference, shifted) > 5.0


def test_different_digits_differ(zero_reference):
    one_image = drawing_to_mnist(np.asarray(draw_one()))

    assert mean_abs_difference(zero_reference, one_image) > 5.0


# drawing_to_mnist: input forms


def test_grey_black_on_white(zero_reference):
    check_mnist_style(zero_reference)


def test_grey_white_on_black_is_not_inverted(zero_grey, zero_reference):
    image = drawing_to_mnist(255 - zero_grey)

    assert np.array_equal(image, zero_reference)


def test_grey_with_channel_axis(zero_grey, zero_reference):
    image = drawing_to_mnist(zero_grey[:, :, np.newaxis])

    assert np.array_equal(image, zero_reference)


def test_rgb_black_on_white(zero_grey, zero_reference):
    rgb = np.repeat(zero_grey[:, :, np.newaxis], 3, axis=2)

    image = drawing_to_mnist(rgb)

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_rgb_white_on_black(zero_grey, zero_reference):
    rgb = np.repeat(255 - zero_grey[:, :, np.newaxis], 3, axis=2)

    image = drawing_to_mnist(rgb)

    assert mean_abs_difference(image, zero_reference) < 1.0
    assert border(image).max() <= 5


def test_rgb_coloured_ink(zero_grey):
    # Blue ink on white: dark enough in grey to count as ink.
    rgb = np.full(zero_grey.shape + (3,), 255, dtype=np.uint8)
    rgb[zero_grey < 128] = (0, 0, 255)

    image = drawing_to_mnist(rgb)

    check_mnist_style(image)


def test_rgba_transparent_background(zero_grey, zero_reference):
    image = drawing_to_mnist(as_rgba_strokes(zero_grey))

    assert mean_abs_difference(image, zero_reference) < 1.0
    assert border(image).max() <= 5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_pil_image_modes(mode, zero_grey, zero_reference):
    pil_image = Image.fromarray(zero_grey, mode="L").convert(mode)

    image = drawing_to_mnist(pil_image)

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_pil_rgba_transparent_background(zero_grey, zero_reference):
    pil_image = Image.fromarray(as_rgba_strokes(zero_grey), mode="RGBA")

    image = drawing_to_mnist(pil_image)

    assert mean_abs_difference(image, zero_reference) < 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_array_in_unit_range(dtype, zero_grey, zero_reference):
    image = drawing_to_mnist(zero_grey.astype(dtype) / 255.0)

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_float_rgb_in_unit_range(zero_grey, zero_reference):
    rgb = np.repeat(zero_grey[:, :, np.newaxis], 3, axis=2).astype(np.float32) / 255.0

    image = drawing_to_mnist(rgb)

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_with_composite(zero_grey, zero_reference):
    composite = np.dstack([np.repeat(zero_grey[:, :, np.newaxis], 3, axis=2), np.full(zero_grey.shape, 255, np.uint8)])
    blank_layer = np.zeros(zero_grey.shape + (4,), dtype=np.uint8)

    image = drawing_to_mnist({"composite": composite, "layers": [blank_layer], "background": None})

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_composite_wins_over_layers(zero_grey, zero_reference):
    one_layer = as_rgba_strokes(np.asarray(draw_one()))

    image = drawing_to_mnist({"composite": zero_grey, "layers": [one_layer], "background": None})

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_with_only_layers(zero_grey, zero_reference):
    image = drawing_to_mnist({"composite": None, "layers": [as_rgba_strokes(zero_grey)], "background": None})

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_layers_are_combined(zero_grey, zero_reference):
    # Left half of the ring on one layer, right half on another.
    left = zero_grey.copy()
    left[:, CANVAS // 2:] = 255
    right = zero_grey.copy()
    right[:, :CANVAS // 2] = 255
    layers = [as_rgba_strokes(left), None, as_rgba_strokes(right)]

    image = drawing_to_mnist({"layers": layers})

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_layers_over_white_background(zero_grey, zero_reference):
    background = np.full(zero_grey.shape + (3,), 255, dtype=np.uint8)

    image = drawing_to_mnist({"composite": None, "layers": [as_rgba_strokes(zero_grey)], "background": background})

    assert mean_abs_difference(image, zero_reference) < 1.0


def test_dict_background_only(zero_grey, zero_reference):
    background = np.repeat(zero_grey[:, :, np.newaxis], 3, axis=2)

    image = drawing_to_mnist({"composite": None, "layers": [], "background": background})

    assert mean_abs_difference(image, zero_reference) < 1.0


# drawing_to_mnist: empty and unsupported input


@pytest.mark.parametrize(
    "drawing",
    [
        pytest.param(np.full((CANVAS, CANVAS), 255, dtype=np.uint8), id="white-grey"),
        pytest.param(np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8), id="white-rgb"),
        pytest.param(np.zeros((CANVAS, CANVAS), dtype=np.uint8), id="black-grey"),
        pytest.param(np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8), id="black-rgb"),
        pytest.param(np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8), id="transparent-rgba"),
        pytest.param(np.ones((CANVAS, CANVAS), dtype=np.float32), id="white-float"),
        pytest.param(Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0)), id="transparent-pil"),
        pytest.param(Image.new("L", (CANVAS, CANVAS), 255), id="white-pil"),
        pytest.param({"composite": None, "layers": [], "background": None}, id="dict-nothing"),
        pytest.param({}, id="dict-empty"),
        pytest.param({"layers": [None]}, id="dict-none-layer"),
        pytest.param({"layers": [np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)]}, id="dict-blank-layer"),
    ],
)
def test_empty_drawing_is_rejected(drawing):
    with pytest.raises(EmptyDrawingError):
        drawing_to_mnist(drawing)


def test_faint_marks_count_as_empty():
    drawing = np.full((CANVAS, CANVAS), 255, dtype=np.uint8)
    drawing[100:180, 100:180] = 255 - INK_THRESHOLD

    with pytest.raises(EmptyDrawingError):
        drawing_to_mnist(drawing)


def test_uint8_levels_are_not_rescaled():
    drawing = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    drawing[100:180, 100:180] = 1

    with pytest.raises(EmptyDrawingError):
        drawing_to_mnist(drawing)


def test_empty_drawing_error_is_value_error():
    assert issubclass(EmptyDrawingError, ValueError)


@pytest.mark.parametrize("drawing", [None, "drawing.png", 42, [[0, 255], [255, 0]], b"\x00" * 784])
def test_unsupported_type_is_rejected(drawing):
    with pytest.raises(TypeError):
        drawing_to_mnist(drawing)


@pytest.mark.parametrize("shape", [(CANVAS, CANVAS, 2), (CANVAS, CANVAS, 5), (4, CANVAS, CANVAS, 3), (CANVAS,)])
def test_unsupported_shape_is_rejected(shape):
    drawing = np.full(shape, 255, dtype=np.uint8)

    with pytest.raises(ValueError):
        drawing_to_mnist(drawing)
