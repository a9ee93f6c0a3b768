"""Data loading: training-pipeline images/s per worker vs PNG decoding alone, on 2048x1024 frames.

Frames come from `--root` (a Cityscapes-layout folder, e.g. the real dataset) or are drawn into a
temporary folder (synthetic scenes at 1024x2048). Each row decodes the image and its label file: with
bare PIL, and with `seg_gan.data.io` (PIL plus the mode checks and the label-id handling, what the
pipeline uses). The rows take turns, one pass over the frames each, `--repeats` times, and each row
reports its fastest pass: on a shared machine a burst of other work then slows one pass, not a whole row.
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from seg_gan.data.cityscapes import CityscapesDataModule
from seg_gan.data.io import read_image, read_label
from seg_gan.data.synthetic import write_synthetic_cityscapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="Cityscapes-layout folder to read (default: draw synthetic frames)")
    parser.add_argument("--frames", type=int, default=16, help="frames to draw when --root is not given")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the frames per row (the fastest counts)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader row")


def rate(function, items: list) -> float:
    """Items per second of `function` over one pass of `items`, after one warm-up call."""
    function(items[0])
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


def loader_rate(loader: DataLoader) -> float:
    """Items per second of one pass over `loader` (worker start-up included)."""
    start = time.perf_counter()
    for _batch in loader:
        pass
    return len(loader.dataset) / (time.perf_counter() - start)


def run(options: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # one worker = one core: the per-worker figure
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(options.root) if options.root else Path(tmp) / "frames"
        if not options.root:
            write_synthetic_cityscapes(root, (1024, 2048), {"train": options.frames}, seed=0)
        data = CityscapesDataModule(str(root), num_workers=0, crop_size=(512, 1024), scale_range=(0.5, 2.0))
        dataset = data.dataset(data.samples("train"), train=True)
        samples = dataset.samples
        indices = list(range(len(dataset)))

        def decode_pil(sample):
            np.asarray(Image.open(sample.image).convert("RGB"))
            np.asarray(Image.open(sample.label))

        def decode_used(sample):
            read_image(sample.image)
            read_label(sample.label)

        loader = DataLoader(dataset, batch_size=1, num_workers=options.workers, shuffle=False)
        measurements = {
            "PNG decode only, bare PIL (image + label)": lambda: rate(decode_pil, samples),
            "PNG decode only, seg_gan.data.io (used; image + label)": lambda: rate(decode_used, samples),
            "training pipeline, 1 worker (decode + map + scale/crop/flip + normalise)":
                lambda: rate(dataset.__getitem__, indices),
            f"DataLoader, {options.workers} workers": lambda: loader_rate(loader),
        }  # fmt: skip
        best = dict.fromkeys(measurements, 0.0)
        for _ in range(options.repeats):  # the rows take turns; each keeps its fastest pass
            for name, measure in measurements.items():
                best[name] = max(best[name], measure())
        rows = list(best.items())

    print(
        f"\nData loading on {len(samples)} frames of 1024x2048 ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread per worker)"
    )
    print(f"{'measurement':<78}{'images/s':>10}")
    for name, value in rows:
        print(f"{name:<78}{value:>10.2f}")
    print(f"pipeline / decode-only rate of the decoder it uses: {rows[2][1] / rows[1][1]:.2f} (target >= 0.80)")
