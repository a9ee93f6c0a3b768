"""Inference speed: images/s at full resolution for whole-image and sliding-window inference.

Random weights (speed does not depend on them) of the default generator, or `--ckpt_path`.
"""

import argparse
import time

import torch

from seg_gan.checkpoint import load_model
from seg_gan.module import SegGAN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=3, help="timed images per mode")
    parser.add_argument("--arch", default="FPN")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--window", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--stride", type=int, nargs=2, default=[341, 683])
    parser.add_argument("--ckpt_path", help="a trained checkpoint instead of random weights")


def run(options: argparse.Namespace) -> None:
    rows = []
    for mode in ("whole", "slide"):
        kwargs = {"inference": mode, "window": tuple(options.window), "stride": tuple(options.stride)}
        if options.ckpt_path:
            model = load_model(options.ckpt_path, name="--ckpt_path", **kwargs)
        else:
            model = SegGAN(num_classes=19, arch=options.arch, encoder_name=options.encoder, lambda_adv=0.0, **kwargs)
        model = model.eval().to(options.device)
        image = torch.randn(1, 3, *options.size, device=options.device)
        with torch.inference_mode():
            model.predict_logits(image)  # warm-up
            if options.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(options.images):
                model.predict_logits(image).argmax(1)
            if options.device == "cuda":
                torch.cuda.synchronize()
        rows.append((mode, options.images / (time.perf_counter() - start)))
    device = torch.cuda.get_device_name() if options.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nInference at {options.size[0]}x{options.size[1]}, {options.arch}-{options.encoder}, {device}")
    print(f"{'mode':<50}{'images/s':>10}")
    for mode, rate in rows:
        label = mode if mode == "whole" else f"slide (window {options.window}, stride {options.stride})"
        print(f"{label:<50}{rate:>10.3f}")
