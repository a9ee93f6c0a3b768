"""The benchmarks' code paths on the CPU, and the semi-supervised study's bookkeeping."""

import json

import numpy as np
import pytest
from PIL import Image


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
    for folder in ("train", "trainannot", "val", "valannot"):
        originals = sorted((camvid_root / folder).glob("*.png"))
        assert [p.name for p in sorted((copy / folder).glob("*.png"))] == [p.name for p in originals]
        original, scaled = (Image.open(d / folder / originals[0].name) for d in (camvid_root, copy))
        assert scaled.size == (32, 24) and scaled.mode == original.mode
        if folder.endswith("annot"):  # nearest: no new label values
            assert set(np.unique(np.array(scaled))) <= set(np.unique(np.array(original)))
    stamp = (copy / "DONE").stat().st_mtime_ns
    assert scaled_copy(camvid_root, tmp_path, [24, 32]) == copy and (copy / "DONE").stat().st_mtime_ns == stamp


def test_semi_benchmark_table_from_result_files(tmp_path):

    from seg_gan.bench.semi import table

    for arm, seed, miou in [("supervised", 0, 0.50), ("supervised", 1, 0.52), ("full", 0, 0.61),
                            ("semi", 0, 0.54), ("semi", 1, 0.54)]:  # fmt: skip
        result = {"arm": arm, "seed": seed, "val_mIoU": miou, "train_s": 60.0}
        (tmp_path / f"{arm}-seed{seed}.json").write_text(json.dumps(result))
    rows = {line.split(" | ")[0].strip("| "): line for line in table(tmp_path).splitlines()[2:]}
    assert list(rows) == ["supervised", "semi", "full"]  # arms without files are left out
    assert "| 0.5100 | 0.5000-0.5200 | 0.0141 |" in rows["supervised"]
    assert "| +30% |" in rows["semi"]  # (0.54 - 0.51) / (0.61 - 0.51)
