"""Operations and FLOPs per training batch of each arm of the semi-supervised study (`semi.py`'s runs).

    python -m seg_gan.bench ops --root /path/to/CamVid     # every arm: 30 batches at 32x32 crops, 3 at 192x256

Every PyTorch operator call (aten op) that a training batch dispatches is counted with a `TorchDispatchMode`
over `--window` batches after `--warmup` ones, on this machine's default device (a CPU, unless run where CUDA
is), with self-training on from the first batch (the steady state of every arm) and the study's CSV logging.
Ops that only make a view, allocate or read metadata (`VIEWS`) launch nothing; on a GPU each other op launches
about one kernel (a fused optimizer step, one op, launches a few). Loading runs in the loader's worker
processes and is not counted (with `--extra --data.num_workers 0` each batch's random crop and flip would be).
Where the host checks the loss for a non-finite value every step (a CPU; on a GPU every 50 batches) a few ops
more are counted. FLOPs (torch's `FlopCounterMode`: convolutions and matrix products, not elementwise ops) are
counted over batches 1 and 2 at `--flops-crop`, as they grow with the pixels; the op counts hardly do (cutmix:
3184 ops at 32x32 crops, 3185 at 64x64), so tiny crops give a GPU run's counts in minutes on a CPU. The study's
runs are small (EfficientNet-Lite0 Unet, batches of 8 at 192x256); which of the two a GPU run's time follows is
read against measured runs (bench README, "What a run costs on a GPU"). The wall time printed is this
machine's.
"""

import argparse
import collections
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from seg_gan.bench import semi

# aten ops that return a view of their input, allocate without writing, or read metadata: no kernel launch
VIEWS = frozenset({
    "alias", "as_strided", "detach", "diagonal", "empty", "empty_like", "empty_strided", "expand",
    "is_same_size", "lift_fresh", "new_empty", "new_empty_strided", "permute", "resize_", "select", "slice",
    "split", "split_with_sizes", "squeeze", "squeeze_", "t", "transpose", "unbind", "unfold", "unsqueeze",
    "unsqueeze_", "view", "_reshape_alias", "_unsafe_view",
})  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="CamVid folder (SegNet layout), as for `semi`")
    parser.add_argument("--arms", nargs="+", default=list(semi.ARMS), choices=list(semi.ARMS))
    parser.add_argument("--labels", default="1-16", choices=list(semi.LABELS))
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"), help="as for `semi`")
    parser.add_argument("--crop", type=int, nargs=2, default=[32, 32], metavar=("H", "W"), help="ops' crops (32 32)")
    parser.add_argument("--flops-crop", type=int, nargs=2, default=[192, 256], metavar=("H", "W"),
                        help="FLOPs' crops (the study's: 192 256)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=20, help="batches before the counted ones (default 20)")
    parser.add_argument("--window", type=int, default=10, help="counted batches (default 10)")
    parser.add_argument("--work", type=Path, default=Path("bench_results/semi"), help="as for `semi`")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI options for every run")


class Count(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name (`aten.add_.Tensor` -> `add_`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def launches(ops: collections.Counter) -> int:
    """The ops of `ops` that launch work: all but `VIEWS`."""
    return sum(count for name, count in ops.items() if name not in VIEWS)


class Window(pl.Callback):
    """Counts the ops (or, `flops`, the FLOPs) of training batches [start, start + length) and times them."""

    def __init__(self, start: int, length: int, flops: bool = False) -> None:
        self.start, self.length, self.stop, self.seconds, self.began = start, length, start + length, None, None
        self.mode = FlopCounterMode(display=False) if flops else Count()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx == self.start:
            self.mode.__enter__()
            self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx == self.stop - 1:
            self.seconds = time.perf_counter() - self.began
            self.mode.__exit__(None, None, None)

    def close(self) -> None:
        """Leaves the mode if the window opened and did not close (training ended or failed inside it)."""
        if self.began is not None and self.seconds is None:
            self.mode.__exit__(None, None, None)
            self.began = None


def fit_window(options: argparse.Namespace, arm: str, weights: Path, crop: list[int], flops: bool) -> Window:
    """Trains `arm` (seed 0) at `crop` and counts --window batches after --warmup ones (FLOPs: batch 1 and 2,
    as they depend on the shapes only)."""
    warmup, length = (1, 2) if flops else (options.warmup, options.window)
    run = argparse.Namespace(**vars(options), tag="-ops", batches=warmup + length, semi_start=0)
    run.extra = ["--data.crop_size", str(crop), *options.extra]
    cli, _ = semi.configure(run, arm, 0, weights)
    window = Window(warmup, length, flops)
    cli.trainer.callbacks.append(window)
    try:
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        window.close()  # the mode must not stay on for the rest of the process
    if window.seconds is None:
        raise SystemExit(f"error: arm {arm!r} trained {cli.trainer.fit_loop.epoch_loop.total_batch_idx} batches, "
                         f"fewer than the {warmup} + {length} asked for.")  # fmt: skip
    return window


def count_arm(options: argparse.Namespace, arm: str, weights: Path) -> dict:
    """{ops, launches, ms, gflops}: per counted batch of `arm` (seed 0)."""
    ops = fit_window(options, arm, weights, options.crop, flops=False)
    flops = fit_window(options, arm, weights, options.flops_crop, flops=True)
    n = ops.length
    return {"ops": sum(ops.mode.ops.values()) / n, "launches": launches(ops.mode.ops) / n, "ms": ops.seconds / n * 1000,
            "gflops": flops.mode.get_total_flops() / flops.length / 1e9}  # fmt: skip


def run(options: argparse.Namespace) -> None:
    if options.warmup < 0 or options.window < 1:
        raise SystemExit(f"error: --warmup {options.warmup} --window {options.window}: expected a warm-up of 0 or "
                         "more batches and at least 1 counted batch.")  # fmt: skip
    options.work.mkdir(parents=True, exist_ok=True)
    weights = semi.encoder_weights(options.work)
    options.data_root = semi.scaled_copy(Path(options.root), options.work, options.size)
    rows = {}
    for arm in options.arms:
        rows[arm] = count_arm(options, arm, weights)
        print(f"{arm}: {rows[arm]['launches']:.0f} ops that launch work per batch", flush=True)
    first = options.arms[0]
    lines = [f"Per training batch: ops over batches {options.warmup}-{options.warmup + options.window - 1} at crops "
             f"{options.crop[0]}x{options.crop[1]}, FLOPs over batches 1-2 at {options.flops_crop[0]}x"
             f"{options.flops_crop[1]}; torch {torch.__version__}", "",
             f"| arm | aten ops | of which launch work (not views) | launches / {first}'s | GFLOP | GFLOP / {first}'s "
             "| ms per batch (here, counting ops) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, row in rows.items():
        ratio, flops = row["launches"] / rows[first]["launches"], row["gflops"] / rows[first]["gflops"]
        lines.append(f"| {arm} | {row['ops']:.0f} | {row['launches']:.0f} | {ratio:.2f} | {row['gflops']:.3g} | "
                     f"{flops:.2f} | {row['ms']:.0f} |")  # fmt: skip
    print("\n".join(lines))
