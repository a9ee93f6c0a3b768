"""Data loading: training-pipeline images/s per worker vs PNG decoding alone, on 2048x1024 frames.

Frames come from `--root` (a Cityscapes-layout folder, e.g. the real dataset) or are drawn into a
temporary folder (synthetic scenes at 1024x2048). Each row decodes the image and its label file: with
bare PIL, and with `seg_gan.data.io` (PIL plus the mode checks and the label-id handling, what the
pipeline uses). The rows take turns, one pass over the frames each, `--repeats` times, and each row
reports its fastest pass: on a shared machine a burst of other work then slows one pass, not a whole row.

Then the training loader itself (DataLoader of training batches, pinned memory where CUDA is, as
`configs/cityscapes.yaml` sets it) with each of `--workers`, in steady state (whole rounds of one batch per worker
after the first, so worker start-up is left out; at least 3 timed rounds), and the smallest worker count that
reaches `--target-images-per-s`, the rate of the GPU step it has to feed (default: the fastest step of
seg_gan/bench/README.md, on an H200).

Each pass prints its rate as it ends, and a SIGTERM (from `timeout`, say) ends the call with the table of the
passes that finished and a non-zero exit: a GPU session's data step once printed nothing, cut off at its limit
before the table.
"""

import argparse
import math
import os
import platform
import signal
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from seg_gan.data.cityscapes import CityscapesDataModule
from seg_gan.data.io import image_size, read_image, read_label
from seg_gan.data.synthetic import write_synthetic_cityscapes

# images/s: Unet-ResNet50 + FCN D, batch 8, 512x1024, bf16 + channels_last + compile, H200 (bench README, gpu)
GPU_STEP = 118.47


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="Cityscapes-layout folder to read (default: draw synthetic frames)")
    parser.add_argument("--frames", type=int, default=16, help="frames to draw when --root is not given")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the frames per row (the fastest counts)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to measure")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8, help="training batch size of the loader rows")
    parser.add_argument("--images", type=int, default=96, help="images per loader pass (the frames are repeated)")
    parser.add_argument("--target-images-per-s", type=float, default=GPU_STEP,
                        help="the GPU step's images/s the loader must reach (default: %(default)s, the H200 "
                             "bf16+channels_last+compile step of seg_gan/bench/README.md)")  # fmt: skip


def rate(function, items: list) -> float:
    """Items per second of `function` over one pass of `items`, after one warm-up call."""
    function(items[0])
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


ROUNDS = 3  # timed rounds of one batch per worker, at least


def loader_rate(loader: DataLoader) -> float:
    """Images per second of one pass over `loader`, timed over whole rounds after the first. Its workers start
    together and deliver in rounds of one batch each: timed from its first batch, the rest of the first round
    came free (many workers over few rounds read high)."""
    workers = max(loader.num_workers, 1)
    batches = iter(loader)
    for _ in range(workers):  # the first round: start-up
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range((len(loader) // workers - 1) * workers):  # whole rounds only
        images += len(next(batches)["image"])
    return images / (time.perf_counter() - start)


def workers_needed(rates: dict[int, float], target: float) -> str:
    """Which measured worker count first reaches `target` images/s, or an extrapolation from the best
    per-worker rate when none does."""
    for workers, rate in sorted(rates.items()):
        if rate >= target:
            return f"{workers} workers reach {target:.1f} images/s ({rate:.1f})"
    per_worker = max(rate / max(workers, 1) for workers, rate in rates.items())  # 0 workers: the main process
    return (
        f"no measured worker count reaches {target:.1f} images/s; at the best per-worker rate measured "
        f"({per_worker:.1f}) it takes about {math.ceil(target / per_worker)} workers, given as many free cores"
    )


class Stopped(BaseException):
    """A SIGTERM arrived: no more passes; the table of those that finished follows (a BaseException, so that
    no `except Exception` on the way, DataLoader's included, takes it for an error of its own)."""


def run(options: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # one worker = one core: the per-worker figure
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(options.root) if options.root else Path(tmp) / "frames"
        if not options.root:
            write_synthetic_cityscapes(root, tuple(options.frame_size), {"train": options.frames}, seed=0)
        data = CityscapesDataModule(str(root), num_workers=0, crop_size=tuple(options.crop), scale_range=(0.5, 2.0))
        dataset = data.dataset(data.samples("train"), train=True)
        samples = dataset.samples
        indices = list(range(len(dataset)))

        def decode_pil(sample):
            np.asarray(Image.open(sample.image).convert("RGB"))
            np.asarray(Image.open(sample.label))

        def decode_used(sample):
            read_image(sample.image)
            read_label(sample.label)

        def repeated(workers: int):  # --images, or enough for the first round and ROUNDS timed ones
            count = max(options.images, (ROUNDS + 1) * max(workers, 1) * options.batch)
            return data.dataset((samples * -(-count // len(samples)))[:count], train=True)

        measurements = {
            "PNG decode only, bare PIL (image + label)": lambda: rate(decode_pil, samples),
            "PNG decode only, seg_gan.data.io (used; image + label)": lambda: rate(decode_used, samples),
            "training pipeline, 1 worker (decode + map + scale/crop/flip + normalise)":
                lambda: rate(dataset.__getitem__, indices),
        }  # fmt: skip
        for workers in options.workers:
            loader = DataLoader(repeated(workers), batch_size=options.batch, num_workers=workers, drop_last=True,
                                pin_memory=torch.cuda.is_available())  # fmt: skip
            measurements[f"training loader, batch {options.batch}, {workers} workers"] = partial(loader_rate, loader)
        best: dict[str, float] = {}
        signalled = []

        def terminate(signum, frame):
            signalled.append(signum)
            raise Stopped

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            for repeat in range(options.repeats):  # the rows take turns; each keeps its fastest pass
                for name, measure in measurements.items():
                    value = measure()
                    best[name] = max(best.get(name, 0.0), value)
                    print(f"pass {repeat + 1}/{options.repeats}: {name}: {value:.2f} images/s", flush=True)
        except (Stopped, RuntimeError):  # a SIGTERM to the process group also kills the loader's workers
            if not signalled:
                raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        height, width = image_size(samples[0].image)

    print(
        f"\nData loading on {len(samples)} frames of {height}x{width} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread per worker, {os.cpu_count()} cores)"
    )
    print(f"{'measurement':<78}{'images/s':>10}")
    for name, value in best.items():
        print(f"{name:<78}{value:>10.2f}")
    decoded, pipeline = (best.get(name) for name in list(measurements)[1:3])
    if decoded and pipeline:
        print(f"pipeline / decode-only rate of the decoder it uses: {pipeline / decoded:.2f} (target >= 0.80)")
    loaders = {
        workers: best[name]
        for workers, name in zip(options.workers, list(measurements)[3:], strict=True)
        if name in best
    }
    if loaders:
        print(workers_needed(loaders, options.target_images_per_s))
    if signalled:
        raise SystemExit("error: stopped by SIGTERM; the table above holds the passes that finished (the fastest of "
                         "each row's finished passes).")  # fmt: skip
