"""The benchmarks' code paths on the CPU, and the semi-supervised study's bookkeeping."""

import json

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from seg_gan.errors import UserError


@pytest.mark.parametrize("args, expected", [
    (["gpu", "--crop", "64", "64", "--encoder", "resnet18", "--steps", "1", "--warmup", "1", "--batch", "1",
      "--variants", "fp32", "bf16+channels_last, supervised (no D)"], "| bf16+channels_last, supervised (no D) |"),
    (["step", "--sizes", "64x64", "--steps", "1", "--warmup", "1", "--batch", "1"], "FLOPs adv/sup"),
    (["inference", "--size", "64", "128", "--images", "1", "--window", "64", "64", "--stride", "32", "32"], "slide"),
])  # fmt: skip
def test_benchmark_code_paths_run_on_cpu(capsys, args, expected):
    from seg_gan.bench.__main__ import main as bench

    bench([*args, "--device", "cpu"])
    assert expected in capsys.readouterr().out


def test_semi_benchmark_scales_camvid_once(camvid_root, tmp_path):
    from seg_gan.bench.semi import scaled_copy

    copy = scaled_copy(camvid_root, tmp_path, [24, 32])
    for folder in ("train", "trainannot", "val", "valannot"):  # (test, testannot: when the root has them)
        originals = sorted((camvid_root / folder).glob("*.png"))
        assert [p.name for p in sorted((copy / folder).glob("*.png"))] == [p.name for p in originals]
        original, scaled = (Image.open(d / folder / originals[0].name) for d in (camvid_root, copy))
        assert scaled.size == (32, 24) and scaled.mode == original.mode
        if folder.endswith("annot"):  # nearest: no new label values
            assert set(np.unique(np.array(scaled))) <= set(np.unique(np.array(original)))
    stamp = (copy / "DONE").stat().st_mtime_ns
    assert scaled_copy(camvid_root, tmp_path, [24, 32]) == copy and (copy / "DONE").stat().st_mtime_ns == stamp


def test_semi_tables_from_result_files_with_paired_intervals(tmp_path):
    from seg_gan.bench.semi_table import interval, tables

    def write(arm, labels, seed, val, test):
        iou = {"Sky": val, "Bicyclist": float("nan")}
        result = {"arm": arm, "labels": labels, "seed": seed, "val_mIoU": val, "test_mIoU": test, "val_iou": iou,
                  "test_iou": iou, "diagnostics": {"semi_mask_precision": 0.9} if arm == "cutmix" else {}}  # fmt: skip
        (tmp_path / f"{arm}-{labels}-seed{seed}.json").write_text(json.dumps(result))

    for seed, (base, mixed) in enumerate([(0.50, 0.56), (0.52, 0.57), (0.51, 0.55)]):
        write("supervised", "1-16", seed, base, base - 0.01)
        write("cutmix", "1-16", seed, mixed, mixed)
    write("full", "full", 0, 0.61, 0.60)
    main, classes, masks = tables(tmp_path).strip().split("\n\n")[1:4]  # after the heading
    rows = {line.split(" | ")[0].strip("| "): line for line in (main + "\n" + classes).splitlines()}
    assert "| 0,1,2 | 51.0 ± 1.0 | 50.0 ± 1.0 |" in rows["supervised"]
    # paired val differences 6, 5, 4 points: mean 5, t(0.975, 2) = 4.303, sem = 1 / sqrt(3)
    mean, low, high = interval([0.06, 0.05, 0.04])
    assert (mean, round(low, 4), round(high, 4)) == (pytest.approx(0.05), 0.0252, 0.0748)
    assert "+5.0 [+2.5, +7.5] 3/3 gain" in rows["cutmix"]
    assert "| +50% / +60% |" in rows["cutmix"]  # (56 - 51) / (61 - 51) on val; (56 - 50) / (60 - 50) on test
    assert rows["full"].startswith("| full | 0 | 61.0 | 60.0 |")
    assert rows["Bicyclist"].endswith("| - | - | - |")  # nan: absent in every run
    assert "| cutmix | 0.900 | - | - | - |" in masks


def test_class_balanced_labeled_lists():
    from seg_gan.data.splits import choose_balanced

    presence = {f"a_{i}": {i % 3} for i in range(12)} | {f"b_{i}": {0, 1} for i in range(6)}
    groups = {name: name[0] for name in presence}
    chosen, tries = choose_balanced(presence, groups, 6, classes=3, seed=0)
    assert len(chosen) == 6 and sum(n.startswith("a") for n in chosen) == 4  # 12 of 18 frames -> 4 of 6
    assert all(sum(c in presence[n] for n in chosen) >= 2 for c in range(3)) and tries >= 1
    assert choose_balanced(presence, groups, 6, classes=3, seed=0) == (chosen, tries)  # seeded
    with pytest.raises(UserError, match="no draw of 2 images"):
        choose_balanced(presence, groups, 2, classes=3, seed=0, max_tries=50)
    for name, count in [("1-32", 11), ("1-16", 23), ("1-8", 46)]:  # the shipped lists
        names = (REPO / "configs" / "splits" / f"camvid_{name}_balanced.txt").read_text().split()
        assert len(names) == len(set(names)) == count
        assert {n.split("_")[0] for n in names} == {"0001TP", "0006R0", "0016E5"}
