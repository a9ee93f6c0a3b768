"""What the GPU benchmark compares a step with: the device's own bf16 matmul and convolution rates, measured in
the same run, the FLOPs of the real training step, and a record of the machine.

`python -m seg_gan.bench gpu` uses these; they are plain functions so that a test runs them on the CPU.
"""

import datetime
import os
import platform
import subprocess
import time

import lightning.pytorch as pl
import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(function, flops: float, device: torch.device, seconds: float) -> float:
    """TFLOP/s of `function` (doing `flops` each call): warm-up calls, then as many as fit in `seconds`, at least 3."""
    for _ in range(3):
        function()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        function()
        calls += 1
        if calls % 10 == 0:
            _sync(device)
    _sync(device)
    return flops * calls / (time.perf_counter() - start) / 1e12


def matmul_tflops(device: torch.device, n: int, seconds: float = 2.0) -> float:
    """Measured TFLOP/s of an [n, n] x [n, n] bf16 matmul (2 n^3 FLOPs) on `device`."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return _rate(lambda: a @ b, 2 * n**3, device, seconds)


def conv_tflops(
    device: torch.device, batch: int, channels: int, height: int, width: int, seconds: float = 2.0
) -> float:
    """Measured TFLOP/s of a 3x3 bf16 convolution, channels -> channels, stride 1, on [batch, channels, height,
    width] in channels_last (2 x 9 x channels^2 x batch x height x width FLOPs): a ResNet/Unet-sized layer."""
    x = torch.randn(batch, channels, height, width, device=device, dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, torch.bfloat16)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        return _rate(lambda: conv(x), 2 * 9 * channels**2 * batch * height * width, device, seconds)


def step_flops(model: pl.LightningModule, loader, accelerator: str) -> float:
    """FLOPs of one training batch of `model` (counted by FlopCounterMode over Lightning's real training step:
    G forward and backward, D forward and backward on real and fake, G's adversarial pass; convolutions and
    matmuls, which is what FlopCounterMode counts), run once in eager fp32 on a one-batch `loader`."""
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        trainer.fit(model, loader)
    return float(counter.get_total_flops())


def environment(device: torch.device) -> dict:
    """The machine and software a result was measured with."""
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "cuda": torch.version.cuda,
        "device": "CPU",
    }
    if device.type == "cuda":
        record["device"] = torch.cuda.get_device_name(device)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            record["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            record["driver"] = "unknown (nvidia-smi failed)"
    return record
