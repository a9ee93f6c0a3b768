"""The benchmarks' code paths on the CPU, and the semi-supervised study's bookkeeping."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.mark.parametrize("args, expected", [
    (["step", "--sizes", "64x64", "--steps", "1", "--warmup", "1", "--batch", "1"], "FLOPs adv/sup"),
    (["inference", "--size", "64", "128", "--images", "1", "--window", "64", "64", "--stride", "32", "32"], "slide"),
])  # fmt: skip
def test_benchmark_code_paths_run_on_cpu(capsys, args, expected):
    from seg_gan.bench.__main__ import main as bench

    bench([*args, "--device", "cpu"])
    assert expected in capsys.readouterr().out


def test_gpu_benchmark_runs_on_cpu_and_writes_each_run_as_it_ends(capsys, tmp_path):
    from seg_gan.bench.__main__ import main as bench

    variants = ["bf16+channels_last, supervised (no D)", "bf16+channels_last, Cityscapes loader"]
    bench(["gpu", "--device", "cpu", "--crop", "64", "64", "--encoder", "resnet18", "--steps", "1", "--warmup", "1",
           "--batch", "1", "--repeats", "2", "--matmul-size", "64", "--conv-shape", "1", "8", "16", "16",
           "--limit-seconds", "0.05", "--frames", "1", "--frame-size", "96", "128", "--workers", "0",
           "--out", str(tmp_path), "--variants", *variants])  # fmt: skip
    printed = capsys.readouterr().out
    runs = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs").glob("*.json"))]
    assert sorted((run["variant"], run["run"]) for run in runs) == sorted((v, r) for v in variants for r in (1, 2))
    assert all(run["images_per_s"] > 0 and run["compiles_while_timed"] == 0 for run in runs)
    limits = json.loads((tmp_path / "limits.json").read_text())
    assert limits["limits"]["matmul_tflops"] > 0 and limits["environment"]["torch"] == torch.__version__
    flops = limits["flops_per_image"]  # the adversarial step counts D's passes on top of the supervised step's
    assert float(flops["0.01"]) > float(flops["0.0"]) > 0
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in printed
    for variant in variants:  # median and range over the 2 runs, TFLOP/s, MFU
        assert re.search(rf"\| {re.escape(variant)} \| [\d.]+ \| [\d.]+-[\d.]+ \| [\d.e-]+ \| [\d.]+% \|", table)
    assert "loader-fed / in-memory" not in table  # its in-memory twin did not run
    assert "adversarial / supervised" not in table


def test_data_benchmark_names_the_worker_count_that_reaches_the_step_rate(capsys):
    from seg_gan.bench.__main__ import main as bench

    bench(["data", "--frames", "2", "--frame-size", "96", "128", "--crop", "64", "64", "--images", "8", "--batch", "2",
           "--workers", "0", "1", "--repeats", "1", "--target-images-per-s", "1e6"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "training loader, batch 2, 0 workers" in printed and "training loader, batch 2, 1 workers" in printed
    assert re.search(r"no measured worker count reaches 1000000.0 images/s; .* about \d+ workers", printed)


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
