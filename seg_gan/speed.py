"""What makes the training step fast without changing what it computes: fused optimizers, torch.compile of the
training calls only, and the check that bf16 is not asked of a CPU that emulates it.

Two names here lean on torch's internals, each covered by a test that fails when torch changes them:
`nn.Module._compiled_call_impl` (what `nn.Module.compile` sets; `compile_for_training`) and an optimizer's
`found_inf` attribute (what `torch.amp.GradScaler` sets; fused optimizers skip their update on the device where it
is non-zero; `seg_gan.guards.StabilityGuard` uses it).
"""

from collections.abc import Mapping
from functools import cache
from pathlib import Path

import torch
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")  # fused SGD, Adam and AdamW kernels (found_inf included) in torch >= 2.4


def build_optimizer(cls, params, device: torch.device, **options) -> torch.optim.Optimizer:
    """`cls(params, **options)`, fused where torch has fused kernels for `device` (a few kernels for all the
    parameters: on the development CPU 5 to 7 times faster than torch's default loop; seg_gan/bench/README.md, gpu).
    SGD's momentum buffers start at zero, which equals SGD's own first step (buffer = gradient) when dampening
    is 0, so that a fused step skipped through `found_inf` at the very first step leaves a defined buffer
    (torch's fused SGD leaves it uninitialised then).

    Args:
        cls: torch.optim.SGD, Adam or AdamW (or a partial of one).
        params: the parameters (an iterable of tensors).
        device: where the parameters are.
        **options: the optimizer's own options (lr, weight_decay, ...).
    """
    fused = {"fused": True} if device.type in FUSED_DEVICES else {}
    optimizer = cls(params, **options, **fused)
    for group in optimizer.param_groups:
        if isinstance(optimizer, torch.optim.SGD) and group["momentum"] and not group["dampening"]:
            for param in group["params"]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
    return optimizer


def compile_for_training(network: nn.Module) -> None:
    """torch.compile `network` in place for training: calls in train mode run compiled code with static shapes
    (one graph per input shape, grad mode and requires_grad pattern, all met in the first batches: G once, and
    once more without gradients when `g_every_n_batches` > 1; D twice, its own step on [real; fake] and G's step
    on the fakes); calls in eval mode (validation, test, predict, export) run eagerly, so whole images of any size
    never compile, and no graph turns dynamic. Parameters and state_dict keys stay (only the call is replaced,
    as `nn.Module.compile` does; a pickled copy runs eagerly)."""
    compiled = torch.compile(network._call_impl, dynamic=False)
    eager = network._call_impl
    network._compiled_call_impl = lambda *args, **kwargs: (compiled if network.training else eager)(*args, **kwargs)


# ---- bf16 on a CPU -------------------------------------------------------------------------------------------
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # x86 AVX512-BF16 / AMX-BF16, ARM BF16 / SVE-BF16


@cache
def cpu_capabilities() -> Mapping[str, object]:
    """This CPU's features: `torch.cpu.get_capabilities()` where torch has it, else the flags of /proc/cpuinfo."""
    if hasattr(torch.cpu, "get_capabilities"):
        return torch.cpu.get_capabilities()
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flags = {word for line in text.splitlines() if line.startswith(("flags", "Features")) for word in line.split()}
    return dict.fromkeys(flags, True)


def has_native_bf16(capabilities: Mapping[str, object]) -> bool:
    """True if a CPU with these features (`cpu_capabilities()`) computes bfloat16 in hardware."""
    return any(capabilities.get(flag) for flag in NATIVE_BF16)


def slow_precision_advice(precision: str, device_type: str, capabilities: Mapping[str, object]) -> str | None:
    """The warning for a bf16 precision (`trainer.precision`) asked of a CPU without native bf16, else None.

    Without AVX512-BF16 or AMX-BF16 (x86) or BF16 (ARM), bf16 is emulated: on an AVX2 CPU one forward and
    backward of Unet-ResNet18 (batch 4, 256x512) took 2.6 s in fp32 and 114.8 s in bf16 (issue 18).
    """
    if device_type != "cpu" or "bf16" not in str(precision) or has_native_bf16(capabilities):
        return None
    return (
        f"trainer.precision {precision} on a CPU without native bfloat16 (none of {', '.join(NATIVE_BF16)} in its "
        "features): bf16 is emulated there, tens of times slower than fp32. Expected --trainer.precision 32-true "
        "on this machine (bf16-mixed pays on GPUs and on CPUs with AVX512-BF16 or AMX)."
    )


def warn_if_slow_cpu_precision(strategy: Strategy) -> None:
    """Warn once (rank 0) when the run's precision is bf16 on a CPU that emulates it."""
    precision = getattr(strategy.precision_plugin, "precision", "32-true")
    advice = slow_precision_advice(precision, strategy.root_device.type, cpu_capabilities())
    if advice:
        rank_zero_warn(advice)
