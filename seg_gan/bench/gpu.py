"""GPU training speed: images/s and peak memory of the GAN training step under each speed option.

Runs the real SegGAN training step through a Lightning Trainer (manual optimisation, D and G steps)
on random in-memory batches at 512x1024 crops, so only the model and the step are measured. Variants,
one switch apart: fp32 -> bf16 autocast -> channels_last -> cudnn.benchmark off -> torch.compile, and
the supervised step (no D) for the cost of the adversary.
Needs a CUDA device (`--device cpu` with small sizes only checks that it runs).
"""

import argparse
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from seg_gan.module import SegGAN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=200, help="timed training batches per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet50")


# name -> (precision, channels_last, cudnn.benchmark, compile_models, lambda_adv)
VARIANTS = {
    "fp32": ("32-true", False, True, False, 0.01),
    "bf16": ("bf16-mixed", False, True, False, 0.01),
    "bf16+channels_last": ("bf16-mixed", True, True, False, 0.01),
    "bf16+channels_last, cudnn.benchmark off": ("bf16-mixed", True, False, False, 0.01),
    "bf16+channels_last+compile": ("bf16-mixed", True, True, True, 0.01),
    "bf16+channels_last, supervised (no D)": ("bf16-mixed", True, True, False, 0.0),
}


class RandomBatches(Dataset):
    def __init__(self, length: int, crop: tuple[int, int], num_classes: int = 19):
        generator = torch.Generator().manual_seed(0)
        self.image = torch.randn(3, *crop, generator=generator)
        self.mask = torch.randint(0, num_classes, tuple(crop), generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.image, "mask": self.mask}


class Timer(pl.Callback):
    """Times the training batches after `warmup` ones, from batch end to batch end."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.batches += 1
            self.end = time.perf_counter()

    def seconds(self) -> float:
        return self.end - self.start


def measure(options: argparse.Namespace, variant: str) -> tuple[float, float]:
    precision, channels_last, cudnn_benchmark, compile_models, lambda_adv = VARIANTS[variant]
    torch.backends.cudnn.benchmark = cudnn_benchmark
    pl.seed_everything(0, verbose=False)
    model = SegGAN(num_classes=19, arch=options.arch, encoder_name=options.encoder, channels_last=channels_last,
                   compile_models=compile_models, lambda_adv=lambda_adv, g_optimizer="adamw", g_lr=1e-4)  # fmt: skip
    batches = options.warmup + options.steps
    loader = DataLoader(RandomBatches(batches * options.batch, tuple(options.crop)), batch_size=options.batch)
    timer = Timer(options.warmup)
    trainer = pl.Trainer(accelerator="gpu" if options.device == "cuda" else "cpu", devices=1,
                         precision=precision, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         limit_val_batches=0)  # fmt: skip
    trainer.fit(model, loader)
    images_per_s = timer.batches * options.batch / timer.seconds()
    peak = torch.cuda.max_memory_allocated() / 2**30 if options.device == "cuda" else float("nan")
    print(f"{variant}: {images_per_s:.2f} images/s, peak {peak:.2f} GiB", flush=True)
    return images_per_s, peak


def run(options: argparse.Namespace) -> None:
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run this benchmark on a GPU machine (or --device cpu to test).")
    name = torch.cuda.get_device_name() if options.device == "cuda" else "CPU"
    rows = [(variant, *measure(options, variant)) for variant in options.variants]
    print(
        f"\nGAN training step on {name}: {options.arch}-{options.encoder} + FCN D, batch {options.batch}, "
        f"{options.crop[0]}x{options.crop[1]} crops, {options.steps} timed batches after {options.warmup}"
    )
    first = rows[0][1]
    print(f"| variant | images/s | peak GiB | speed vs {rows[0][0]} |\n|---|---|---|---|")
    for variant, speed, peak in rows:
        print(f"| {variant} | {speed:.2f} | {peak:.2f} | {speed / first:.2f} |")
