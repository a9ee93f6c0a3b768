"""The GPU benchmark's table: per variant the median and range of images/s, TFLOP/s and MFU, then the ratios the
issue's targets are about (`python -m seg_gan.bench gpu` prints it and writes it as table.md)."""

from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# (variant, baseline, what the ratio says) printed under the table when both ran
SUP, CL = ", supervised (no D)", "bf16+channels_last"
RATIOS = [
    (CL + "+compile", CL, "compile on / off (target >= 1.2)"),
    (CL + "+compile" + SUP, CL + SUP, "compile on / off, supervised"),
    (CL + "+compile", CL + "+compile as before (nn.Module.compile)", "compile now / as before"),
    (CL, CL + ", unfused optimizers, host-checked skips", "fused optimizers and device-side skips / before"),
    (CL, CL + ", host-checked skips", "device-side / host-checked skips"),
    (CL + ", Cityscapes loader", CL, "loader-fed / in-memory (target >= 0.9)"),
    (CL + "+compile, Cityscapes loader", CL + "+compile", "loader-fed / in-memory, compiled"),
]
SUPERVISED_PAIRS = [(CL, CL + SUP), (CL + "+compile", CL + "+compile" + SUP)]


def table(rows: list[dict], flops: dict, limits: dict, header: str, failed: dict | None = None,
          stopped: str | None = None) -> str:  # fmt: skip
    """Markdown: `rows` (gpu.summary's), the ratios of the pairs that both ran, the variants that `failed`
    ({name: error}) and, if the call `stopped` early, why (a SIGTERM or the time limit)."""
    lines = [header, "", f"bf16 matmul {limits['matmul_tflops']:.3g} TFLOP/s, bf16 3x3 convolution "
             f"{limits['conv_tflops']:.3g} TFLOP/s (measured in this run); MFU = step TFLOP/s / matmul TFLOP/s", "",
             "| variant | runs | images/s (median) | range | step TFLOP/s | MFU | peak GiB | compiles while timed |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(f"| {row['variant']} | {row['runs']} | {row['images_per_s']:.2f} | {row['min']:.2f}-"
                     f"{row['max']:.2f} | {row['tflops']:.3g} | {row['mfu']:.1%} | {peak} | "
                     f"{row['compiles_while_timed']} |")  # fmt: skip
    speed = {row["variant"]: row["images_per_s"] for row in rows}
    lines.append("")
    for variant, baseline, what in RATIOS:
        if variant in speed and baseline in speed:
            lines.append(f"- {what}: {speed[variant] / speed[baseline]:.2f}")
    for adversarial, supervised in SUPERVISED_PAIRS:
        if adversarial in speed and supervised in speed and 0.0 in flops and 0.01 in flops:
            time_ratio = speed[supervised] / speed[adversarial]
            lines.append(f"- adversarial / supervised ({adversarial}): time {time_ratio:.2f}, "
                         f"FLOPs {flops[0.01] / flops[0.0]:.2f} (target: time ratio <= FLOP ratio)")  # fmt: skip
    lines += [f"- failed: {name} ({error}); its row, if any, holds the runs before" for name, error in
              (failed or {}).items()]  # fmt: skip
    if stopped:
        lines.append(f"- stopped early by {stopped}: no run started after it; the runs column counts the runs that "
                     "finished")  # fmt: skip
    return "\n".join(lines)


def failure(error: BaseException) -> str:
    """One line for the table: the error's type and its message (which may be empty or span lines)."""
    message = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def sync_table(places: list[str], starts: list[int]) -> str:
    """The sync audit's counts by source line: before the first training batch starts (set-up, and batch 0's copy
    to the device), in batch 0, and per batch over the later ones. `places`: one source line per synchronisation,
    in order; `starts`: how many had happened when each batch started (Lightning copies batch k to the device just
    before batch k starts, so that copy counts with batch k - 1)."""
    bounds = [0, *starts[:2], len(places)]  # set-up | batch 0 | the later batches
    later = max(len(starts) - 1, 1)
    counts: dict[str, list[float]] = {}
    for group, (begin, end) in enumerate(pairwise(bounds)):
        for place in places[begin:end]:  # relative to site-packages or the repository: no machine's paths
            place = place.split("site-packages/")[-1].removeprefix(f"{REPO}/")
            counts.setdefault(place, [0, 0, 0])[group] += 1
    lines = [f"host-device synchronisations by source line over {len(starts)} training batches (sync debug mode):",
             "  before batch 0   batch 0   per later batch   source line"]  # fmt: skip
    for place, (setup, first, rest) in sorted(counts.items(), key=lambda item: -sum(item[1])):
        lines.append(f"  {setup:14.0f}  {first:8.0f}  {rest / later:16.2f}   {place}")
    return "\n".join(lines)
