"""The semi-supervised study's tables, built only from the result files (one JSON per arm, labels, seed).

Per labeled subset, arm and run length: mean and std of val and test mIoU; the paired difference to the
supervised arm (same seeds and length only) with its 95% t-interval and sign count; the share of the
supervised-to-full gap closed; then per-class test IoU and the mask diagnostics. A gain (or loss) is
claimed only where the interval excludes zero over at least the 5 pairs the protocol fixed before any
result was seen: an arm read while its grid is incomplete claims nothing, whatever its interval says.
"""

import json
import statistics
from pathlib import Path

from scipy import stats

BATCHES = 1000  # semi.py's default run length (names carry any other; the grid runs 2000); other lengths: own rows
CLAIM_PAIRS = 5  # the protocol's seeds per arm: fewer pairs print their interval but claim nothing
ORDER = ["supervised", "adversarial", "hung", "hung-noise", "error", "s4gan", "confidence", "cutmix", "full"]


def load(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]


def method(arm: str) -> str:
    """The arm a (possibly tagged) arm name runs: `cutmix-len2000` -> `cutmix`."""
    return max((m for m in ORDER if arm == m or arm.startswith(m + "-")), key=len, default=arm)


def runs_of(results: list[dict], arm: str, batches: int) -> list[dict]:
    """The results of one table row: that arm (tag included) at that run length."""
    return [r for r in results if r["arm"] == arm and r.get("batches") == batches]


def baseline(results: list[dict], arm: str, batches: int) -> dict[int, dict]:
    """seed -> the supervised result `arm` is paired with: same labels, same number of batches (a shorter
    probe never pairs with a full-length baseline), and the arm's tag where a supervised run carries it
    (`cutmix-len2000` pairs with `supervised-len2000`, a probe without one with `supervised`)."""
    kind = method(arm)
    for name in [f"supervised{arm.removeprefix(kind)}", "supervised"] if kind != "supervised" else ["supervised"]:
        found = {r["seed"]: r for r in runs_of(results, name, batches)}
        if found:
            return found
    return {}


def pairs(results: list[dict], arm: str, batches: int) -> list[tuple[dict, dict]]:
    """(arm's result, its supervised baseline's) for each seed both were run with."""
    base = baseline(results, arm, batches)
    return [(r, base[r["seed"]]) for r in runs_of(results, arm, batches) if r["seed"] in base]


def paired(results: list[dict], arm: str, batches: int, split: str) -> list[float]:
    """arm minus its supervised baseline, for each seed both were run with."""
    return [r[f"{split}_mIoU"] - b[f"{split}_mIoU"] for r, b in pairs(results, arm, batches)]


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


def difference(results: list[dict], arm: str, batches: int, split: str) -> str:
    differences = paired(results, arm, batches, split)
    found = interval(differences)
    if method(arm) == "supervised" or not differences:  # a supervised probe is no arm to compare
        return ""
    wins = sum(d > 0 for d in differences)
    if found is None:
        return f"{differences[0] * 100:+.1f} (1 pair)"
    mean, low, high = found
    verdict = "" if len(differences) < CLAIM_PAIRS else " gain" if low > 0 else " loss" if high < 0 else ""
    return f"{mean * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] {wins}/{len(differences)}{verdict}"


def gap_closed(results: list[dict], full: list[dict], arm: str, batches: int, split: str) -> str:
    """mean(arm - baseline) / (mean(full) - mean(baseline)) over the seeds the arm and its baseline share
    (a grid cut short leaves arms with fewer seeds than supervised), all at the same number of batches; the
    ceiling is the mean of its own seeds."""
    key, both = f"{split}_mIoU", pairs(results, arm, batches)
    top = [r[key] for r in full if r.get("batches") == batches]
    if method(arm) in ("supervised", "full") or not (both and top):
        return ""
    gap = statistics.mean(top) - statistics.mean(b[key] for _, b in both)
    return f"{statistics.mean(r[key] - b[key] for r, b in both) / gap:+.0%}" if gap > 0 else "n/a"


def row_order(row: tuple[str, int]) -> tuple:
    """The arms in ORDER, then the probes (tagged arms) grouped by tag, each group's supervised first."""
    arm, batches = row
    kind = method(arm)
    return arm.removeprefix(kind), batches, ORDER.index(kind) if kind in ORDER else len(ORDER)


def label(arm: str, batches: int) -> str:
    return arm if batches == BATCHES else f"{arm} ({batches} batches)"


def tables(folder: Path) -> str:
    """Markdown tables of every labeled subset in `folder` (mIoU in points, mean ± std over seeds); one row
    per arm and run length."""
    everything = load(folder)
    if not everything:
        return f"no result files in {folder} yet: run python -m seg_gan.bench semi --root /path/to/CamVid ..."
    full = [r for r in everything if r["arm"] == "full"]
    out = []
    for labels in sorted({r["labels"] for r in everything if r["labels"] != "full"}):
        results = [r for r in everything if r["labels"] == labels] + full
        rows = sorted({(r["arm"], r.get("batches")) for r in results}, key=row_order)
        header = ("| arm | seeds | val mIoU | test mIoU | val: paired diff to supervised [95% CI] wins | "
                  "test: paired diff [95% CI] wins | gap closed (val / test) |")  # fmt: skip
        out += [f"\n### CamVid, {labels} of the labels", "", header, "|---|---|---|---|---|---|---|"]
        for arm, batches in rows:
            runs = runs_of(results, arm, batches)
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            gap = [gap_closed(results, full, arm, batches, split) for split in ("val", "test")]
            means = [summary([r[f"{split}_mIoU"] for r in runs]) for split in ("val", "test")]
            differences = [difference(results, arm, batches, split) for split in ("val", "test")]
            out.append(f"| {label(arm, batches)} | {seeds} | {' | '.join(means)} | {' | '.join(differences)} | "
                       f"{' / '.join(gap) if any(gap) else ''} |")  # fmt: skip
        out += ["", per_class(results, rows), "", mask_table(results, rows), *longer_runs(results)]
    return "\n".join(out)


def longer_runs(results: list[dict]) -> list[str]:
    """A line naming the runs that trained past their length: a non-finite loss skips an optimizer step
    without counting it (`seg_gan.guards`), and the length is set in optimizer steps. Files written before
    `trained_batches` was recorded are not named."""
    longer = [r for r in results if r.get("trained_batches", r["batches"]) > r["batches"]]
    if not longer:
        return []
    names = [f"{r['arm']} seed {r['seed']} ({r['trained_batches']} batches, {r['skipped_steps']} step"
             f"{'s' if r['skipped_steps'] != 1 else ''} skipped)" for r in longer]  # fmt: skip
    return ["", "Runs that trained more batches than their row says (skipped steps are not counted): "
            f"{', '.join(names)}."]  # fmt: skip


def per_class(results: list[dict], rows: list[tuple[str, int]]) -> str:
    classes = list(results[0]["test_iou"])
    lines = ["| test IoU % | " + " | ".join(label(*row) for row in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in classes:
        cells = []
        for row in rows:
            values = [v for r in runs_of(results, *row) if (v := r["test_iou"][name]) == v]  # nan: class absent
            cells.append(f"{statistics.mean(values) * 100:.1f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mask_table(results: list[dict], rows: list[tuple[str, int]]) -> str:
    """Means over seeds of the logged mask and D figures (the shares of batches: from self-training's start
    for D's band, `seg_gan.bench.semi.diagnostics`), and over several seeds how many had a mask more precise
    than G's softmax over the last quarter; a mask that was empty in every logged batch has no precision,
    and says so instead of a dash (which would read as a figure not logged)."""
    keys = ["semi_mask_precision", "softmax_mask_precision_same_coverage", "semi_mask_coverage",
            "mask_less_precise_than_softmax", "mask_minus_softmax_last_quarter", "mask_less_precise_last_quarter",
            "d_accuracy", "d_accuracy_last_quarter", "d_accuracy_in_band"]  # fmt: skip
    lines = ["| arm | mask precision | G's softmax precision at that coverage | mask coverage | share of batches "
             "mask less precise | last quarter: mask minus softmax precision | last quarter: share mask less "
             "precise | D accuracy | D accuracy, last quarter | share of batches D in 0.6-0.85 |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        runs = [r["diagnostics"] for r in runs_of(results, *row)]
        cells = [format(statistics.mean(v), "+.3f" if "minus" in k else ".3f") if (v := [d[k] for d in runs if k in d])
                 else "-" for k in keys]  # fmt: skip
        late = [d[keys[4]] for d in runs if keys[4] in d]
        if len(late) > 1:  # the claim about D's mask rests on each seed, not on the mean alone
            cells[4] += f" (ahead on {sum(x > 0 for x in late)} of {len(late)} seeds)"
        if runs and all(d.get("semi_mask_coverage") == 0 and keys[0] not in d for d in runs):
            cells[:2] = ["(empty mask)", "(empty mask)"]
        if method(row[0]) in ("confidence", "cutmix") and any(runs):  # a max-softmax mask (cutmix: the teacher's)
            cells[1] = cells[3] = cells[4] = cells[5] = "(the mask itself)"  # equal by construction: no comparison
        if any(cell != "-" for cell in cells):
            lines.append(f"| {label(*row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
