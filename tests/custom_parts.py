"""Parts plugged in by class_path without editing the package: discriminators, test callbacks."""

import os
import signal

import torch
from lightning.pytorch import Callback
from torch import nn


class TinyDiscriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(num_classes, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 3, padding=1)
        )

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(probs)  # [B, 1, H, W]


class NaNOnceDiscriminator(TinyDiscriminator):
    """Non-finite logits on its first call only (batch 0's D step, which comes first): one skipped step."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.calls = 0

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = super().forward(probs, image)
        return logits * float("nan") if self.calls == 1 else logits


class DumpWeights(Callback):
    """Writes each process's weights at the start and end of training to
    <out_dir>/{start,end}-rank<R>.pt (to compare DDP ranks)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def _dump(self, trainer, pl_module, when: str) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, f"{self.out_dir}/{when}-rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "end")


class KillAt(Callback):
    """Sends its own process a signal at the start of the given epoch and batch: SIGKILL is a crash
    mid-run, SIGTERM what SLURM sends before pre-empting a job."""

    def __init__(self, epoch: int, batch: int = 0, signal_name: str = "SIGKILL"):
        self.epoch, self.batch, self.signal = epoch, batch, getattr(signal, signal_name)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signal)
