"""The semi-supervised study's tables, built only from the result files (one JSON per arm, labels, seed).

Per labeled subset and arm: mean and std of val and test mIoU; the paired difference to the supervised
arm (same seeds only) with its 95% t-interval and sign count; the share of the supervised-to-full gap
closed; then per-class test IoU and the mask diagnostics. A gain is claimed only where the interval
excludes zero.
"""

import json
import statistics
from pathlib import Path

from scipy import stats

ORDER = ["supervised", "adversarial", "hung", "error", "s4gan", "confidence", "cutmix", "full"]


def load(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]


def paired(results: list[dict], arm: str, split: str) -> list[float]:
    """arm minus supervised, for each seed both were run with (same labels, same number of batches: a shorter
    probe never pairs with a full-length baseline)."""
    key = lambda r: (r["seed"], r.get("batches"))  # noqa: E731
    base = {key(r): r[f"{split}_mIoU"] for r in results if r["arm"] == "supervised"}
    return [r[f"{split}_mIoU"] - base[key(r)] for r in results if r["arm"] == arm and key(r) in base]


def interval(differences: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean difference and its 95% t-interval; None under two pairs."""
    if len(differences) < 2:
        return None
    mean, sem = statistics.mean(differences), statistics.stdev(differences) / len(differences) ** 0.5
    half = stats.t.ppf(0.975, len(differences) - 1) * sem
    return mean, mean - half, mean + half


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values) * 100:.1f}{spread}"


def difference(results: list[dict], arm: str, split: str) -> str:
    differences = paired(results, arm, split)
    found = interval(differences)
    if arm == "supervised" or not differences:
        return ""
    wins = sum(d > 0 for d in differences)
    if found is None:
        return f"{differences[0] * 100:+.1f} (1 pair)"
    mean, low, high = found
    verdict = " gain" if low > 0 else " loss" if high < 0 else ""
    return f"{mean * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] {wins}/{len(differences)}{verdict}"


def gap_closed(results: list[dict], full: list[dict], arm: str, split: str) -> str:
    lengths = {r.get("batches") for r in results if r["arm"] == "supervised"}  # as in `paired`
    base = [r[f"{split}_mIoU"] for r in results if r["arm"] == "supervised"]
    top = [r[f"{split}_mIoU"] for r in full if r.get("batches") in lengths]
    mine = [r[f"{split}_mIoU"] for r in results if r["arm"] == arm and r.get("batches") in lengths]
    if arm in ("supervised", "full") or not (base and top and mine):
        return ""
    gap = statistics.mean(top) - statistics.mean(base)
    return f"{(statistics.mean(mine) - statistics.mean(base)) / gap:+.0%}" if gap > 0 else "n/a"


def tables(folder: Path) -> str:
    """Markdown tables of every labeled subset in `folder` (mIoU in points, mean ± std over seeds)."""
    everything = load(folder)
    if not everything:
        return f"no result files in {folder} yet: run python -m seg_gan.bench semi --root /path/to/CamVid ..."
    full = [r for r in everything if r["arm"] == "full"]
    out = []
    for labels in sorted({r["labels"] for r in everything if r["labels"] != "full"}):
        results = [r for r in everything if r["labels"] == labels] + full
        arms = [a for a in ORDER if any(r["arm"] == a for r in results)]
        arms += sorted({r["arm"] for r in results} - set(arms))  # probes (tagged arms) last
        header = ("| arm | seeds | val mIoU | test mIoU | val: paired diff to supervised [95% CI] wins | "
                  "test: paired diff [95% CI] wins | gap closed (val / test) |")  # fmt: skip
        out += [f"\n### CamVid, {labels} of the labels", "", header, "|---|---|---|---|---|---|---|"]
        for arm in arms:
            runs = [r for r in results if r["arm"] == arm]
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            gap = f"{gap_closed(results, full, arm, 'val')} / {gap_closed(results, full, arm, 'test')}"
            out.append(f"| {arm} | {seeds} | {summary([r['val_mIoU'] for r in runs])} | "
                       f"{summary([r['test_mIoU'] for r in runs])} | {difference(results, arm, 'val')} | "
                       f"{difference(results, arm, 'test')} | {gap if gap != ' / ' else ''} |")  # fmt: skip
        out += ["", per_class(results, arms), "", mask_table(results, arms)]
    return "\n".join(out)


def per_class(results: list[dict], arms: list[str]) -> str:
    classes = list(results[0]["test_iou"])
    lines = ["| test IoU % | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for name in classes:
        cells = []
        for arm in arms:
            values = [
                r["test_iou"][name] for r in results if r["arm"] == arm and r["test_iou"][name] == r["test_iou"][name]
            ]
            cells.append(f"{statistics.mean(values) * 100:.1f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mask_table(results: list[dict], arms: list[str]) -> str:
    keys = ["semi_mask_precision", "softmax_mask_precision_same_coverage", "semi_mask_coverage", "d_accuracy"]
    lines = ["| arm | mask precision | G's softmax precision at that coverage | mask coverage | D accuracy |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arm in arms:
        runs = [r["diagnostics"] for r in results if r["arm"] == arm]
        cells = [f"{statistics.mean(v):.3f}" if (v := [d[k] for d in runs if k in d]) else "-" for k in keys]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
