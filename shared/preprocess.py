"""Image preprocessing shared by the training job, the inference job and the app.

Two steps, kept apart because they run in different places:

- :func:`to_model_input` turns MNIST-style uint8 images into the float tensor the model
  sees. Training, inference and the app's model comparison all call it, so the model is
  never served inputs scaled differently from those it learned on.
- :func:`drawing_to_mnist` turns a free-hand drawing (whatever the sketchpad returns)
  into an MNIST-style uint8 image first: white ink on black, cropped to the ink, scaled to
  fit 20×20 with its aspect kept and centred by mass in 28×28, as the MNIST digits were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

# Mean and standard deviation of MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

IMAGE_SIDE = 28
DIGIT_BOX = 20
# Grey levels (0–255, after polarity is fixed) at or below this count as background.
INK_THRESHOLD = 30


class EmptyDrawingError(ValueError):
    """The drawing has no ink to classify."""


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """Scale uint8 images of shape ``(n, 28, 28)`` or ``(n, 784)`` to a normalised ``(n, 1, 28, 28)`` float tensor."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {array.dtype}")
    if not array.flags.writeable or not array.flags.c_contiguous:
        # Images decoded straight from message bytes are read-only views; torch wants its own copy.
        array = np.array(array, order="C")
    batch = torch.from_numpy(array).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return (batch.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD


def _as_array(image: Any) -> np.ndarray:
    """Turn a PIL image, a numpy array or a sketchpad dict into a numpy array."""
    if isinstance(image, dict):
        composite = image.get("composite")
        if composite is not None:
            return _as_array(composite)
        layers = [layer for layer in image.get("layers") or [] if layer is not None]
        background = image.get("background")
        if background is None and not layers:
            raise EmptyDrawingError("the drawing has no composite, background or layers")
        canvas = None if background is None else Image.fromarray(_as_array(background)).convert("RGBA")
        for layer in layers:
            layer_image = Image.fromarray(_as_array(layer)).convert("RGBA")
            canvas = layer_image if canvas is None else Image.alpha_composite(canvas, layer_image)
        return np.asarray(canvas)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGBA") if image.mode in ("P", "LA", "PA") else image)
    if isinstance(image, np.ndarray):
        return image
    raise TypeError(f"unsupported drawing type {type(image).__name__}: expected a PIL image, numpy array or dict")


def _to_grey(array: np.ndarray) -> np.ndarray:
    """Flatten alpha over white and convert to grey levels in [0, 255] as float."""
    was_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float32)
    if was_float and array.max(initial=0.0) <= 1.0:
        # Float images in [0, 1]; integer images are already grey levels.
        array = array * 255.0
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"unsupported drawing shape {array.shape}: expected H×W, H×W×1, H×W×3 or H×W×4")
    if array.shape[2] == 1:
        return array[:, :, 0]
    rgb = array[:, :, :3]
    if array.shape[2] == 4:
        # A transparent pixel is blank paper: composite over white.
        alpha = array[:, :, 3:4] / 255.0
        rgb = rgb * alpha + 255.0 * (1.0 - alpha)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def drawing_to_mnist(image: Any) -> np.ndarray:
    """Convert a drawing into a 28×28 uint8 MNIST-style image (white digit on black).

    Raises :class:`EmptyDrawingError` when there is no ink.
    """
    grey = _to_grey(_as_array(image))

    # 1. Polarity: MNIST is white ink on black. The border is background, so a light
    # border means dark ink on light paper, which is inverted.
    border = np.concatenate([grey[0, :], grey[-1, :], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        grey = 255.0 - grey

    # 2. Crop to the ink.
    ink = grey > INK_THRESHOLD
    if not ink.any():
        raise EmptyDrawingError("the drawing is empty: draw a digit first")
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    digit = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    # 3. Scale the longer side to 20 pixels, keeping the aspect ratio.
    height, width = digit.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(np.clip(digit, 0, 255).astype(np.uint8)).resize(new_size, Image.Resampling.LANCZOS)
    digit = np.asarray(resized, dtype=np.float32)

    # 4. Paste into 28×28 so the centre of mass lands on the centre, as in MNIST.
    total = digit.sum()
    ys, xs = np.indices(digit.shape)
    centre_y = (ys * digit).sum() / total
    centre_x = (xs * digit).sum() / total
    top = int(round(IMAGE_SIDE / 2 - centre_y))
    left = int(round(IMAGE_SIDE / 2 - centre_x))
    top = min(max(top, 0), IMAGE_SIDE - digit.shape[0])
    left = min(max(left, 0), IMAGE_SIDE - digit.shape[1])
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
