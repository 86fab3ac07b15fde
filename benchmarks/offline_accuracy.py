"""Train model architectures offline and report held-out accuracy and ONNX Runtime images/s.

Each architecture is trained from scratch on the 8,000 training digits (``load_split(...,
"train")``) for ``--epochs`` passes, then scored on the 2,000 held-out digits, once per
seed. Training uses Adam with a one-cycle learning-rate schedule (peak three times
``--learning-rate``), batches of ``--batch-size`` and random shifts of up to
``--max-shift`` pixels, on one torch thread. This is an offline reference for how good an
architecture can get on this data; the training job learns online, one pass at a time.

The speed is that of the exported serving graph (:func:`shared.model.export_onnx`) in
ONNX Runtime on ``--threads`` intra-op threads at ``--batch`` images per call. The
architectures take turns for ``--rounds`` rounds and the median is reported, so that
their ratio is measured under the same machine load.

    .venv/bin/python -m benchmarks.offline_accuracy --epochs 12 --seeds 0,1,2 \\
        --architecture cnn-tiny-bn-v1 --architecture cnn-small-v1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shared.config import load_config
from shared.data import DataError, Split, load_split
from shared.model import ARCHITECTURES, ONNX_INPUT, build_model, count_parameters, export_onnx
from shared.preprocess import to_model_input


def shift_images(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of ``images`` with each one moved by up to ``max_shift`` pixels in x and y (zero fill)."""
    if max_shift == 0:
        return images.copy()
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    offsets = rng.integers(0, 2 * max_shift + 1, size=(len(images), 2))
    side = images.shape[1]
    shifted = np.empty_like(images)
    for index, (dy, dx) in enumerate(offsets):
        shifted[index] = padded[index, dy:dy + side, dx:dx + side]
    return shifted


def train(architecture: str, train_split: Split, *, epochs: int, seed: int, batch_size: int, learning_rate: float,
          max_shift: int, progress: bool) -> nn.Module:
    """Train a fresh ``architecture`` model on ``train_split`` and return it in eval mode."""
    model = build_model(architecture, seed=seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(train_split.labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3 * learning_rate,
                                                   total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"{architecture} seed {seed}", unit="batch",
               disable=not progress, leave=False, dynamic_ncols=True)
    with bar:
        for _ in range(epochs):
            model.train()
            order = rng.permutation(len(train_split.labels))
            images = shift_images(train_split.images[order], max_shift, rng)
            labels = torch.as_tensor(train_split.labels[order].astype(np.int64))
            for start in range(0, len(order), batch_size):
                optimizer.zero_grad(set_to_none=True)
                batch = slice(start, start + batch_size)
                loss = loss_fn(model(to_model_input(images[batch])), labels[batch])
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
    return model.eval()


def held_out_accuracy(model: nn.Module, split: Split) -> float:
    with torch.inference_mode():
        predicted = model(to_model_input(split.images)).argmax(dim=1).numpy()
    return float((predicted == split.labels).mean())


def onnx_session(model: nn.Module, architecture: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(export_onnx(architecture, model.state_dict()), options,
                                        providers=["CPUExecutionProvider"])


def measure_rates(sessions: dict[str, object], images: np.ndarray, *, rounds: int, seconds: float,
                  progress: bool) -> dict[str, list[float]]:
    """Return images/s per architecture, one figure per round; the architectures take turns each round."""
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    with tqdm(total=rounds * len(sessions), desc="ONNX Runtime images/s", unit="run", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for _ in range(rounds):
            for name, session in sessions.items():
                for _ in range(3):
                    session.run(None, {ONNX_INPUT: images})
                done = 0
                start = time.perf_counter()
                while time.perf_counter() - start < seconds:
                    session.run(None, {ONNX_INPUT: images})
                    done += len(images)
                rates[name].append(done / (time.perf_counter() - start))
                bar.update(1)
    return rates


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seeds {text!r}: expected integers separated by commas") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed")
    return seeds


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", action="append", choices=sorted(ARCHITECTURES),
                        help="architecture id; repeat to compare several (default: the config's architecture)")
    parser.add_argument("--epochs", type=positive_int, default=12, help="passes over the training digits (default 12)")
    parser.add_argument("--seeds", type=parse_seeds, default=[0],
                        help="comma-separated seeds, one training run each (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="training batch size (default 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam learning rate; the one-cycle schedule peaks at three times this (default 0.001)")
    parser.add_argument("--max-shift", type=int, default=2,
                        help="largest random shift of a training image, in pixels (default 2; 0 turns it off)")
    parser.add_argument("--batch", type=positive_int, default=256,
                        help="images per ONNX Runtime call when measuring speed (default 256)")
    parser.add_argument("--threads", type=positive_int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="speed measurement rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="seconds each architecture runs per round (default 1.0)")
    parser.add_argument("--data-dir", help="data directory (default: the config's data_dir)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.max_shift < 0:
        parser.error(f"--max-shift must be 0 or more, got {args.max_shift}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be above 0, got {args.seconds}")

    config = load_config()
    architectures = args.architecture or [config.architecture]
    data_dir = args.data_dir or config.data_dir
    try:
        train_split = load_split(data_dir, "mnist", "train")
        held_out = load_split(data_dir, "mnist", "t10k")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    progress = not args.no_progress

    # 1. Accuracy: one training run per architecture and seed.
    sessions = {}
    accuracies: dict[str, list[float]] = {}
    for architecture in architectures:
        accuracies[architecture] = []
        for seed in args.seeds:
            model = train(architecture, train_split, epochs=args.epochs, seed=seed, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, max_shift=args.max_shift, progress=progress)
            accuracy = held_out_accuracy(model, held_out)
            accuracies[architecture].append(accuracy)
            print(f"{architecture} seed {seed}: held-out accuracy {accuracy:.2%} "
                  f"({len(held_out.labels)} digits, {args.epochs} epochs)", flush=True)
        sessions[architecture] = onnx_session(model, architecture, args.threads)

    # 2. Speed of the exported graph, the architectures taking turns.
    images = np.random.default_rng(0).integers(0, 256, size=(args.batch, 28, 28), dtype=np.uint8)
    rates = measure_rates(sessions, images, rounds=args.rounds, seconds=args.seconds, progress=progress)

    reference = architectures[0]
    print()
    print(f"{'architecture':<18} {'parameters':>10} {'held-out accuracy (min-max)':>28} "
          f"{'ONNX images/s':>14} {'vs ' + reference:>20}")
    for architecture in architectures:
        scores = accuracies[architecture]
        ratios = [rate / base for rate, base in zip(rates[architecture], rates[reference])]
        accuracy_range = f"{min(scores):.2%}-{max(scores):.2%}" if len(scores) > 1 else f"{scores[0]:.2%}"
        print(f"{architecture:<18} {count_parameters(build_model(architecture)):>10,} {accuracy_range:>28} "
              f"{statistics.median(rates[architecture]):>14,.0f} {statistics.median(ratios):>19.2f}x")
    print(f"\nspeed: batch {args.batch}, {args.threads} intra-op thread(s), median of {args.rounds} rounds; "
          f"accuracy over seeds {','.join(map(str, args.seeds))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
