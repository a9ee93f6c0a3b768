"""GPU training speed against the device's own limit: images/s, TFLOP/s and MFU of the real training step.

Runs SegGAN's real training step through a Lightning Trainer (manual optimisation, D and G steps) in variants
one switch apart (precision, channels_last, torch.compile, cudnn.benchmark, fused optimizers, where the
non-finite-loss skip is decided, the supervised step, and the Cityscapes loader instead of in-memory batches).
In the same call it measures a large bf16 matmul and a large bf16 convolution on the device, counts the FLOPs of
one training batch with FlopCounterMode (`seg_gan.bench.limits.step_flops`), and reports per variant the median
and range of images/s over `--repeats` runs (the variants take turns, so drifts hit all alike), the step's
TFLOP/s and its fraction of the measured matmul TFLOP/s (MFU). With `--out DIR` every run, the limits and the
table are written as they finish. `--time-limit` or a SIGTERM (from `timeout`, say) ends the call after the run
in progress, with the table of what finished. `--device cpu` with small sizes checks that all of it runs.
"""

import argparse
import json
import signal
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from seg_gan.bench.feed import Drained, RandomBatches, RepeatedCityscapes
from seg_gan.bench.gpu_table import failure, sync_table, table
from seg_gan.bench.limits import conv_tflops, environment, matmul_tflops, step_flops
from seg_gan.data.synthetic import write_synthetic_cityscapes
from seg_gan.module import SegGAN


@dataclass(frozen=True)
class Variant:
    precision: str = "bf16-mixed"
    channels_last: bool = True
    compile: str | None = None  # "training": model.compile_models (seg_gan.speed); "module": nn.Module.compile
    lambda_adv: float = 0.01  # 0 = the supervised step (no D)
    cudnn_benchmark: bool = False  # PyTorch's default, and the configs'
    fused: bool = True  # fused optimizers (seg_gan.speed.build_optimizer); False = torch's default, as before
    host_checked: bool = False  # the non-finite-loss skip decided by the host every step (a sync), as before
    loader: bool = False  # the Cityscapes data module's loader instead of in-memory batches


BEST = Variant()
VARIANTS = {
    "fp32": Variant(precision="32-true", channels_last=False),
    "bf16": Variant(channels_last=False),
    "bf16+channels_last": BEST,
    "bf16+channels_last, cudnn.benchmark": replace(BEST, cudnn_benchmark=True),
    "bf16+channels_last, host-checked skips": replace(BEST, host_checked=True),
    "bf16+channels_last, unfused optimizers, host-checked skips": replace(BEST, fused=False, host_checked=True),
    "bf16+channels_last+compile": replace(BEST, compile="training"),
    "bf16+channels_last+compile as before (nn.Module.compile)": replace(BEST, compile="module"),
    "bf16+channels_last, supervised (no D)": replace(BEST, lambda_adv=0.0),
    "bf16+channels_last+compile, supervised (no D)": replace(BEST, compile="training", lambda_adv=0.0),
    "bf16+channels_last, Cityscapes loader": replace(BEST, loader=True),
    "bf16+channels_last+compile, Cityscapes loader": replace(BEST, compile="training", loader=True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=25, help="timed training batches per run")
    parser.add_argument("--loader-steps", type=int, default=200,
                        help="timed batches of the loader-fed variants, which run once: the batches prefetched "
                             "during warm-up are dropped first, and the workers' batches in progress can still "
                             "flatter a slower loader by up to (workers + 1) / loader-steps")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median and range are reported")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--out", help="folder for the results: one JSON per run, limits.json, table.md, as they finish")
    parser.add_argument("--matmul-size", type=int, default=8192, help="n of the [n, n] x [n, n] bf16 matmul")
    parser.add_argument("--conv-shape", type=int, nargs=4, default=[8, 256, 128, 256], metavar=("B", "C", "H", "W"),
                        help="input of the 3x3 C->C bf16 convolution")  # fmt: skip
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="timing of the matmul and the convolution")
    parser.add_argument("--root", help="Cityscapes-layout folder for the loader variants (default: draw frames)")
    parser.add_argument("--frames", type=int, default=24, help="synthetic frames to draw for the loader variants")
    parser.add_argument("--frame-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=16, help="DataLoader workers of the loader variants")
    parser.add_argument("--sync-audit", action="store_true",
                        help="CUDA: run the best variant a few batches with torch.cuda.set_sync_debug_mode('warn') "
                             "and list every host-device synchronisation by source line")  # fmt: skip
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="no run starts after this many seconds from the start; the table holds the runs "
                             "that finished and says it stopped early (so does SIGTERM, exiting non-zero)")  # fmt: skip


class Timer(pl.Callback):
    """Times training batches `warmup` to `warmup + steps`, synchronising the device at those two points only
    (a synchronisation per batch would hide the host running ahead of the device)."""

    def __init__(self, warmup: int, steps: int | None = None):
        self.warmup, self.steps, self.start, self.end, self.batches = warmup, steps, None, None, 0
        self.compiles_at_start = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = self.steps is None or batch_idx + 1 == self.warmup + self.steps
        if batch_idx + 1 == self.warmup or (batch_idx + 1 > self.warmup and last):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
        if batch_idx + 1 == self.warmup:
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start, self.compiles_at_start = time.perf_counter(), counters["frames"]["ok"]
        elif batch_idx + 1 > self.warmup:
            self.batches += 1
            self.end = time.perf_counter()

    def seconds(self) -> float:
        return self.end - self.start


class Stop:
    """When to start no more runs: after `seconds` (None: never) or once a SIGTERM arrived. Lightning's trainers
    call this handler too (they keep an existing one). Without it, a SIGTERM that killed a DataLoader worker or a
    compiler subprocess was caught as that variant's failure, the next Trainer cleared Lightning's own flag, and
    the call ran on to its end (how a whole GPU session's results were lost)."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start, self.signalled = seconds, time.monotonic(), False

    def __enter__(self) -> "Stop":
        self.previous = signal.signal(signal.SIGTERM, self.terminate)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def terminate(self, signum, frame) -> None:
        self.signalled = True

    def reason(self) -> str | None:
        """Why to stop now, or None to go on."""
        if self.signalled:
            return "SIGTERM"
        if self.seconds is not None and time.monotonic() - self.start > self.seconds:
            return f"the time limit of {self.seconds:g} s"
        return None


class Unfused(pl.Callback):
    """Gives the optimizers torch's default implementation (foreach on CUDA, a loop over the parameters on a
    CPU), as before issue 18."""

    def on_train_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = None, None


def build(options, variant: Variant) -> SegGAN:
    pl.seed_everything(0, verbose=False)
    model = SegGAN(num_classes=19, arch=options.arch, encoder_name=options.encoder, lambda_adv=variant.lambda_adv,
                   channels_last=variant.channels_last, compile_models=variant.compile == "training",
                   g_optimizer="adamw", g_lr=1e-4)  # fmt: skip
    if variant.compile == "module":  # before issue 18: whole modules, default (automatic dynamic) shapes
        for network in filter(None, [model.generator, model.discriminator]):
            network.compile()
    if variant.host_checked:
        model.guard.check_every = 1
    return model


def timed_steps(options, variant: Variant) -> int:
    return options.loader_steps if variant.loader else options.steps


def prefetched(options) -> int:
    return options.workers * 2  # DataLoader's default prefetch_factor, which the data modules keep


def train_data(options, variant: Variant, frames: Path | None):
    batches = options.warmup + timed_steps(options, variant)
    if not variant.loader:
        return DataLoader(RandomBatches(batches * options.batch, tuple(options.crop)), batch_size=options.batch)
    count = len(list((frames / "leftImg8bit" / "train").glob("*/*.png")))
    repeat = -(-(batches + prefetched(options)) * options.batch // count)
    data = RepeatedCityscapes(str(frames), repeat=repeat, batch_size=options.batch, num_workers=options.workers,
                              pin_memory=options.device == "cuda", persistent_workers=options.workers > 0,
                              crop_size=tuple(options.crop))  # fmt: skip
    data.setup("fit")
    return Drained(data.train_dataloader(), options.warmup, prefetched(options))


def trainer(options, variant: Variant, callbacks: list) -> pl.Trainer:
    batches = options.warmup + timed_steps(options, variant)
    return pl.Trainer(accelerator="gpu" if options.device == "cuda" else "cpu", devices=1, precision=variant.precision,
                      max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks + ([] if variant.fused else [Unfused()]))  # fmt: skip


def measure(options, name: str, models: dict, frames: Path | None) -> dict:
    """One timed run of variant `name`; its model is built once per call and kept (compiled code included)."""
    variant = VARIANTS[name]
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    if name not in models:
        models[name] = build(options, variant)
    model = models[name]
    timer = Timer(options.warmup, timed_steps(options, variant))
    compiles_before = counters["frames"]["ok"]
    trainer(options, variant, [timer]).fit(model, train_data(options, variant, frames))
    return {
        "images_per_s": timer.batches * options.batch / timer.seconds(),
        "timed_batches": timer.batches,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if options.device == "cuda" else None,
        "compiles": counters["frames"]["ok"] - compiles_before,
        "compiles_while_timed": counters["frames"]["ok"] - timer.compiles_at_start,
    }


def flops_per_image(options, lambda_adv: float) -> float:
    """FLOPs of one training batch of `options.batch` images in eager fp32, per image."""
    model = build(options, Variant(precision="32-true", channels_last=False, lambda_adv=lambda_adv))
    loader = DataLoader(RandomBatches(options.batch, tuple(options.crop)), batch_size=options.batch)
    return step_flops(model, loader, "gpu" if options.device == "cuda" else "cpu") / options.batch


def summary(results: dict, flops: dict, limits: dict) -> list[dict]:
    rows = []
    for name, runs in results.items():
        speeds = [run["images_per_s"] for run in runs]
        median = statistics.median(speeds)
        tflops = median * flops[VARIANTS[name].lambda_adv] / 1e12
        peaks = [run["peak_gib"] for run in runs if run["peak_gib"] is not None]
        rows.append({"variant": name, "runs": len(runs), "images_per_s": median, "min": min(speeds),
                     "max": max(speeds), "tflops": tflops, "mfu": tflops / limits["matmul_tflops"],
                     "peak_gib": max(peaks) if peaks else None,
                     "compiles_while_timed": sum(run["compiles_while_timed"] for run in runs)})  # fmt: skip
    return rows


class BatchStarts(pl.Callback):
    """How many warnings `caught` holds as each training batch starts: the sync audit's split by batch."""

    def __init__(self, caught: list):
        self.caught, self.starts = caught, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(len(self.caught))


def sync_audit(options, out: Path | None) -> None:
    """Every host-device synchronisation of a few training batches of the best variant, by source line and
    batch (set-up and batch 0 apart from the steady state, where a synchronisation costs every step)."""
    model = build(options, BEST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        marks = BatchStarts(caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer(options, BEST, [marks]).fit(model, train_data(options, BEST, None))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = ["synchroniz" in str(warning.message) for warning in caught]
    places = [f"{warning.filename}:{warning.lineno}" for warning, sync in zip(caught, syncs, strict=True) if sync]
    text = sync_table(places, [sum(syncs[:start]) for start in marks.starts])  # synchronisations before each batch
    print(text, flush=True)
    if out:
        (out / "sync_audit.txt").write_text(text + "\n")


def run(options: argparse.Namespace) -> None:
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run this benchmark on a GPU machine (or --device cpu to test).")
    with Stop(options.time_limit) as stop:
        measure_all(options, stop)


def measure_all(options: argparse.Namespace, stop: Stop) -> None:
    device = torch.device(options.device)
    out = Path(options.out) if options.out else None
    if out:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    env = environment(device)
    limits = {"matmul_tflops": matmul_tflops(device, options.matmul_size, options.limit_seconds),
              "conv_tflops": conv_tflops(device, *options.conv_shape, seconds=options.limit_seconds)}  # fmt: skip
    print(f"{env['device']}: bf16 matmul {limits['matmul_tflops']:.2f} TFLOP/s, "
          f"conv {limits['conv_tflops']:.2f} TFLOP/s", flush=True)  # fmt: skip
    flops = {lam: flops_per_image(options, lam) for lam in {VARIANTS[name].lambda_adv for name in options.variants}}
    print("FLOPs per image: " + ", ".join(f"lambda_adv {lam}: {value / 1e9:.1f} GFLOP" for lam, value in flops.items()))
    if out:
        record = {"environment": env, "limits": limits, "flops_per_image": flops, "options": vars(options)}
        (out / "limits.json").write_text(json.dumps(record, indent=1, default=str))
    if options.sync_audit and options.device == "cuda":  # first: a few batches, kept by a call cut short
        try:
            sync_audit(options, out)
        except (Exception, SIGTERMException) as error:  # the runs (unless a SIGTERM came) and the table still follow
            print(f"sync audit failed: {failure(error)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        frames = Path(options.root) if options.root else None
        if frames is None and any(VARIANTS[name].loader for name in options.variants):
            frames = write_synthetic_cityscapes(Path(tmp) / "frames", tuple(options.frame_size),
                                                {"train": options.frames, "val": 1}, seed=0)  # fmt: skip
        models, results, failed, stopped = {}, {name: [] for name in options.variants}, {}, None
        header = (f"GAN training step on {env['device']}: {options.arch}-{options.encoder} + FCN D, "
                  f"batch {options.batch}, {options.crop[0]}x{options.crop[1]} crops, {options.steps} timed batches "
                  f"after {options.warmup}, up to {options.repeats} runs per variant (the runs column: how many "
                  f"finished); loader-fed: one run of {options.loader_steps} timed batches, the "
                  f"{prefetched(options)} prefetched ones dropped first (can flatter a slower loader by up to "
                  f"{(options.workers + 1) / options.loader_steps:.1%}); torch {env['torch']}, "
                  f"{env['date']}")  # fmt: skip
        for repeat in range(options.repeats):  # the variants take turns; a loader-fed variant runs once, long
            for name in [n for n in options.variants if n not in failed and not (repeat and VARIANTS[n].loader)]:
                if stopped := stop.reason():
                    break
                try:
                    result = measure(options, name, models, frames)
                except (Exception, SIGTERMException) as error:  # one variant's failure must not cost the others' runs
                    if stop.signalled:  # the SIGTERM cut this run short (Lightning's exit, a killed worker): no failure
                        stopped = "SIGTERM"
                        break
                    failed[name] = f"run {repeat + 1}, {failure(error)}"
                    models.pop(name, None)
                    print(f"{name} (run {repeat + 1}) failed: {failed[name]}", flush=True)
                else:
                    results[name].append(result)
                    print(f"{name} (run {repeat + 1}): {result['images_per_s']:.2f} images/s, {result['compiles']} "
                          f"compiles ({result['compiles_while_timed']} while timed)", flush=True)  # fmt: skip
                    if out:
                        slug = "".join(c if c.isalnum() else "_" for c in name)
                        record = {"variant": name, "settings": asdict(VARIANTS[name]), "run": repeat + 1, **result}
                        (out / "runs" / f"{slug}-{repeat + 1}.json").write_text(json.dumps(record, indent=1))
                if out:  # after a failure too, so that the file never misses one
                    done = summary({key: runs for key, runs in results.items() if runs}, flops, limits)
                    (out / "table.md").write_text(table(done, flops, limits, header, failed) + "\n")
            models = models if repeat + 1 < options.repeats else {}
            if stopped:
                break
    done = summary({key: runs for key, runs in results.items() if runs}, flops, limits)
    text = table(done, flops, limits, header, failed, stopped)
    print("\n" + text)
    if out:  # the same table as after the last run, with the line saying why it stopped early, if it did
        (out / "table.md").write_text(text + "\n")
    if stopped == "SIGTERM":
        raise SystemExit("error: stopped by SIGTERM; the table above holds the runs that finished.")
    if failed:
        raise SystemExit(f"error: {len(failed)} variant(s) failed: {', '.join(failed)} (their errors are listed under "
                         "the table, which holds the other variants' runs).")  # fmt: skip
