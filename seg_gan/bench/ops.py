"""Operations per training batch of each arm of the semi-supervised study (CamVid, `semi.py`'s runs).

    python -m seg_gan.bench ops --root /path/to/CamVid            # every arm, 32x32 crops, on the CPU

Every PyTorch operator call (aten op) that a training batch dispatches is counted with a `TorchDispatchMode`
over `--window` batches after `--warmup` ones, with self-training on from the first batch (the steady state
of every arm). Ops that only make a view or read metadata (`VIEWS`) launch nothing; on a GPU each other op
launches about one kernel. Loading runs in the loader's worker processes and is not counted (with
`--extra --data.num_workers 0` each batch's random crop and flip would be). The study's runs are small
(EfficientNet-Lite0 Unet, batches of 8 at 192x256), so on a GPU their time follows these counts rather than
FLOPs (bench README, "How many runs side by side"). The counts hardly depend on the crop size (cutmix: 3184
ops at 32x32, 3185 at 64x64), so the default tiny crops give a GPU run's counts in minutes on a CPU; the
wall time printed beside them is this machine's.
"""

import argparse
import collections
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from seg_gan.bench import semi

# aten ops that return a view of their input, allocate without writing, or read metadata: no kernel launch
VIEWS = frozenset({
    "alias", "as_strided", "detach", "empty", "empty_like", "empty_strided", "expand", "is_same_size",
    "lift_fresh", "permute", "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose",
    "unbind", "unsqueeze", "view", "_reshape_alias", "_unsafe_view",
})  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="CamVid folder (SegNet layout), as for `semi`")
    parser.add_argument("--arms", nargs="+", default=list(semi.ARMS), choices=list(semi.ARMS))
    parser.add_argument("--labels", default="1-16", choices=list(semi.LABELS))
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"), help="as for `semi`")
    parser.add_argument("--crop", type=int, nargs=2, default=[32, 32], metavar=("H", "W"), help="training crops")
    parser.add_argument("--warmup", type=int, default=20, help="batches before the counted ones")
    parser.add_argument("--window", type=int, default=10, help="counted batches")
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
    """Counts the ops of training batches [start, start + length) and times them."""

    def __init__(self, start: int, length: int) -> None:
        self.start, self.stop, self.count, self.seconds = start, start + length, Count(), None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx == self.start:
            self.count.__enter__()
            self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx == self.stop - 1:
            self.count.__exit__(None, None, None)
            self.seconds = time.perf_counter() - self.began


def count_arm(options: argparse.Namespace, arm: str, weights: Path) -> dict:
    """{ops, launches, ms}: per counted batch of `arm` (seed 0)."""
    run = argparse.Namespace(**vars(options), tag="-ops", batches=options.warmup + options.window, semi_start=0)
    run.extra = ["--data.crop_size", str(options.crop), "--trainer.logger", "false", *options.extra]
    cli, _ = semi.configure(run, arm, 0, weights)
    window = Window(options.warmup, options.window)
    cli.trainer.callbacks.append(window)
    cli.trainer.fit(cli.model, cli.datamodule)
    if window.seconds is None:
        raise SystemExit(f"error: arm {arm!r} trained {cli.trainer.fit_loop.epoch_loop.total_batch_idx} batches, "
                         f"fewer than --warmup {options.warmup} + --window {options.window}.")  # fmt: skip
    n = options.window
    return {"ops": sum(window.count.ops.values()) / n, "launches": launches(window.count.ops) / n,
            "ms": window.seconds / n * 1000}  # fmt: skip


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
    lines = [f"Ops per training batch, batches {options.warmup}-{options.warmup + options.window - 1}, crops "
             f"{options.crop[0]}x{options.crop[1]}, {torch.__version__}", "",
             f"| arm | aten ops | of which launch work (not views) | launches / {first}'s "
             "| ms per batch (here, counting) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arm, row in rows.items():
        ratio = row["launches"] / rows[first]["launches"]
        lines.append(f"| {arm} | {row['ops']:.0f} | {row['launches']:.0f} | {ratio:.2f} | {row['ms']:.0f} |")
    print("\n".join(lines))
