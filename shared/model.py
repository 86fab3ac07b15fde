"""Model architectures, addressed by a stable architecture id stored with every snapshot.

A snapshot names its architecture, so a reader rebuilds the right module before it loads
the weights; weights alone never carry code. :func:`export_onnx` turns a snapshot's
weights into the ONNX graph that the inference job serves without torch.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from shared.preprocess import IMAGE_SIDE, MNIST_MEAN, MNIST_STD, to_model_input

# The exported graph's interface: uint8 images (n, 28, 28) in, class probabilities (n, 10) out.
ONNX_INPUT = "images"
ONNX_OUTPUT = "probabilities"
# Opset 17 is supported by torch 2.15's TorchScript-based exporter and by ONNX Runtime 1.32.
ONNX_OPSET = 17
# Largest difference allowed between ONNX Runtime's and torch's probabilities on the check batch.
ONNX_TOLERANCE = 1e-5


class SmallCNN(nn.Module):
    """Two 3×3 convolutions (16 and 32 channels) with pooling, then 1568→128→10; 206 k parameters.

    Cheap enough to train online on one core at thousands of samples per second. On the
    8,000-digit training stream it reaches about 94 % held-out accuracy after one pass and
    about 97 % after four (Adam, learning rate 1e-3, batches of 32, one thread).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map a ``(n, 1, 28, 28)`` float batch to ``(n, 10)`` logits."""
        return self.classifier(self.features(images))


class TinyBatchNormCNN(nn.Module):
    """Two 3×3 convolutions (8 and 16 channels) with batch norm and pooling, then 784→64→10; 52 k parameters.

    Trained offline on the 8,000 training digits (12 epochs, shifts of up to 2 pixels) it
    reached 98.30–98.60 % held-out accuracy over three seeds, as the 206 k-parameter
    :class:`SmallCNN` did (98.25–98.65 %), and ONNX Runtime ran it 1.35 to 1.6 times as fast
    on one thread (``benchmarks/offline_accuracy.py`` reproduces both). Online it learned
    about as fast per sample as :class:`SmallCNN` and trained 1.6 times as many samples per
    second. Batch norm folds into the convolutions in the exported graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map a ``(n, 1, 28, 28)`` float batch to ``(n, 10)`` logits."""
        return self.classifier(self.features(images))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "cnn-small-v1": SmallCNN,
    "cnn-tiny-bn-v1": TinyBatchNormCNN,
}


def build_model(architecture: str, seed: int | None = None) -> nn.Module:
    """Create an untrained model of ``architecture``; ``seed`` makes its initial weights repeatable."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ServingModel(nn.Module):
    """Wrap a model so that it takes uint8 images ``(n, 28, 28)`` and returns probabilities ``(n, 10)``.

    The scaling of :func:`shared.preprocess.to_model_input` and the softmax are part of
    the graph, so a server of the exported model needs only numpy and ONNX Runtime.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.to(torch.float32).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        logits = self.model((batch / 255.0 - MNIST_MEAN) / MNIST_STD)
        return torch.softmax(logits, dim=1)


def export_onnx(architecture: str, state_dict: Mapping[str, torch.Tensor], verify: bool = True) -> bytes:
    """Export the model ``architecture`` with weights ``state_dict`` to ONNX and return the serialised graph.

    The graph's input ``images`` is uint8 ``(n, 28, 28)`` with a free batch size and its
    output ``probabilities`` is float32 ``(n, 10)``. With ``verify`` the graph runs in ONNX
    Runtime on a fixed batch of random images and its output is compared with torch's. A
    difference above ``ONNX_TOLERANCE`` raises ``RuntimeError``.
    """
    model = build_model(architecture)
    model.load_state_dict(state_dict)
    model.eval()
    serving = ServingModel(model).eval()

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.15 warns that the TorchScript-based exporter (dynamo=False) is deprecated;
        # it is used on purpose because it needs no onnxscript and exports this model exactly.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            serving,
            (torch.zeros(1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8),),
            buffer,
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "n"}, ONNX_OUTPUT: {0: "n"}},
            opset_version=ONNX_OPSET,
        )
    onnx_model = buffer.getvalue()
    if verify:
        _verify_onnx(onnx_model, model)
    return onnx_model


def _verify_onnx(onnx_model: bytes, model: nn.Module) -> None:
    """Raise ``RuntimeError`` unless ONNX Runtime and torch agree on a fixed batch of random images."""
    import onnxruntime

    images = np.random.default_rng(0).integers(0, 256, size=(8, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    exported = session.run([ONNX_OUTPUT], {ONNX_INPUT: images})[0]
    with torch.inference_mode():
        expected = torch.softmax(model(to_model_input(images)), dim=1).numpy()
    difference = float(np.abs(exported - expected).max())
    if not difference <= ONNX_TOLERANCE:
        raise RuntimeError(
            f"the ONNX export differs from the torch model by {difference:.3g} (tolerance {ONNX_TOLERANCE:g})"
        )


def main(argv: list[str] | None = None) -> int:
    """Read safetensors weights from stdin and write their ONNX export to stdout.

    The inference job runs this as a child process (``python -m shared.model ARCHITECTURE``)
    for a snapshot stored without an ONNX model, so that it never imports torch itself.
    """
    import argparse
    import sys

    from safetensors.torch import load as load_safetensors

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("architecture", choices=sorted(ARCHITECTURES), help="architecture id of the weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    onnx_model = export_onnx(args.architecture, load_safetensors(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(onnx_model)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
