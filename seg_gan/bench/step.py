"""Training-step cost: seg_gan through Lightning vs a bare PyTorch loop, and the cost of the adversary.

`python -m seg_gan.bench step` measures, in one process and side by side (this makes ratios robust
on noisy machines):
  1. overhead: the seg_gan training step (Lightning Trainer, manual optimisation, logging on) vs a
     bare loop doing the same arithmetic (same G, D, losses, optimizers, batch, resolution);
  2. adversary: the adversarial step (lambda_adv 0.01) vs the supervised step (lambda_adv 0) in time,
     next to their ratio in floating-point operations (torch.utils.flop_counter.FlopCounterMode).
Peak memory is reported on CUDA (torch.cuda.max_memory_allocated); on CPU it is not measured.
"""

import argparse
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from seg_gan.bench import limits
from seg_gan.bench.feed import RandomBatches
from seg_gan.bench.gpu import Timer
from seg_gan.losses import cross_entropy, discriminator_loss, encode_real, generator_adversarial_loss, valid_mask
from seg_gan.module import SegGAN
from seg_gan.speed import build_optimizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--sizes", nargs="+", default=["256x512", "512x1024"], help="crop sizes HxW")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")


def make_model(options, lambda_adv: float) -> SegGAN:
    pl.seed_everything(0, verbose=False)
    return SegGAN(num_classes=19, arch=options.arch, encoder_name=options.encoder, lambda_adv=lambda_adv,
                  g_optimizer="adamw", g_lr=1e-4)  # fmt: skip


def lightning_rate(options, size: tuple[int, int], lambda_adv: float) -> tuple[float, float]:
    model = make_model(options, lambda_adv)
    batches = options.warmup + options.steps
    loader = DataLoader(RandomBatches(batches * options.batch, size), batch_size=options.batch)
    timer = Timer(options.warmup, options.steps)
    trainer = pl.Trainer(accelerator="gpu" if options.device == "cuda" else "cpu", devices=1, max_epochs=1,
                         logger=pl.loggers.CSVLogger("/tmp/seg_gan_bench"), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], limit_val_batches=0)  # fmt: skip
    trainer.fit(model, loader)
    return timer.batches * options.batch / timer.seconds(), _peak(options)


def bare_rate(options, size: tuple[int, int]) -> tuple[float, float]:
    """The same arithmetic as SegGAN.training_step, written as a plain loop."""
    model = make_model(options, 0.01).to(options.device)
    generator, discriminator = model.generator, model.discriminator
    device = torch.device(options.device)  # the optimizers SegGAN builds (fused), for the same arithmetic
    g_opt = build_optimizer(torch.optim.AdamW, generator.parameters(), device, lr=1e-4,
                            weight_decay=model.hparams.g_weight_decay)  # fmt: skip
    d_opt = build_optimizer(torch.optim.Adam, discriminator.parameters(), device, lr=1e-4, betas=(0.9, 0.99))
    data = RandomBatches(1, size)
    image = data.image.expand(options.batch, -1, -1, -1).contiguous().to(options.device)
    target = data.mask.expand(options.batch, -1, -1).contiguous().to(options.device)
    timed = 0
    for step in range(options.warmup + options.steps):
        if step == options.warmup:
            _sync(options)
            if options.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        logits = generator(image)
        probs = logits.softmax(1)
        fake = probs.detach()
        for p in generator.parameters():
            p.requires_grad_(False)
        real = encode_real(target, fake, 255)
        d_logits = discriminator(torch.cat([real, fake]), torch.cat([image, image]))
        real_logits, fake_logits = d_logits.chunk(2)
        weight = valid_mask(target, 255, real_logits)
        loss_d = discriminator_loss(real_logits, fake_logits, "bce", weight, weight)
        d_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        d_opt.step()
        for p in generator.parameters():
            p.requires_grad_(True)
        for p in discriminator.parameters():
            p.requires_grad_(False)
        adv = generator_adversarial_loss(discriminator(probs, image), "bce", weight)
        loss_g = cross_entropy(logits, target, 255) + 0.01 * adv
        g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        g_opt.step()
        for p in discriminator.parameters():
            p.requires_grad_(True)
        if step >= options.warmup:
            timed += 1
    _sync(options)
    return timed * options.batch / (time.perf_counter() - start), _peak(options)


def step_flops(options, size: tuple[int, int], lambda_adv: float) -> float:
    """FLOPs of one training batch: SegGAN's real step counted by FlopCounterMode (seg_gan.bench.limits), on CPU."""
    loader = DataLoader(RandomBatches(options.batch, size), batch_size=options.batch)
    return limits.step_flops(make_model(options, lambda_adv), loader, "cpu")


def _sync(options) -> None:
    if options.device == "cuda":
        torch.cuda.synchronize()


def _peak(options) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if options.device == "cuda" else float("nan")


def run(options: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if options.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nTraining step, {options.arch}-{options.encoder} + FCN D, batch {options.batch}, {device}, "
          f"{options.steps} timed batches after {options.warmup} warm-up")  # fmt: skip
    print(f"{'size':<10}{'seg_gan img/s':>14}{'bare img/s':>12}{'speed ratio':>13}{'peak GiB s/b':>16}")
    sizes = [tuple(int(v) for v in size.split("x")) for size in options.sizes]
    adversary_rows = []
    for size in sizes:
        ours, ours_peak = lightning_rate(options, size, 0.01)
        bare, bare_peak = bare_rate(options, size)
        print(f"{size[0]}x{size[1]:<6}{ours:>14.2f}{bare:>12.2f}{ours / bare:>13.3f}{ours_peak:>8.2f}/{bare_peak:.2f}")
        supervised, _ = lightning_rate(options, size, 0.0)
        flop_ratio = step_flops(options, size, 0.01) / step_flops(options, size, 0.0)
        adversary_rows.append((size, supervised / ours, flop_ratio))
    print(f"\n{'size':<10}{'time adv/sup':>14}{'FLOPs adv/sup':>15}")
    for size, time_ratio, flop_ratio in adversary_rows:
        print(f"{size[0]}x{size[1]:<6}{time_ratio:>14.2f}{flop_ratio:>15.2f}")
