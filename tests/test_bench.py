"""The benchmarks' code paths on the CPU, and the semi-supervised study's bookkeeping."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from seg_gan.errors import UserError


@pytest.mark.parametrize("args, expected", [
    (["step", "--sizes", "64x64", "--steps", "1", "--warmup", "1", "--batch", "1"], "FLOPs adv/sup"),
    (["inference", "--size", "64", "128", "--images", "1", "--window", "64", "64", "--stride", "32", "32"], "slide"),
])  # fmt: skip
def test_benchmark_code_paths_run_on_cpu(capsys, args, expected):
    from seg_gan.bench.__main__ import main as bench

    bench([*args, "--device", "cpu"])
    assert expected in capsys.readouterr().out


GPU_CPU = ["gpu", "--device", "cpu", "--crop", "64", "64", "--encoder", "resnet18", "--steps", "1", "--warmup", "1",
           "--batch", "1", "--repeats", "2", "--matmul-size", "64", "--conv-shape", "1", "8", "16", "16",
           "--limit-seconds", "0.05", "--frames", "1", "--frame-size", "96", "128", "--workers", "1",
           "--loader-steps", "2"]  # fmt: skip


def test_gpu_benchmark_runs_on_cpu_and_writes_each_run_as_it_ends(capsys, tmp_path):
    from seg_gan.bench.__main__ import main as bench

    variants = ["bf16+channels_last, supervised (no D)", "bf16+channels_last, Cityscapes loader"]
    bench([*GPU_CPU, "--out", str(tmp_path), "--variants", *variants])
    printed = capsys.readouterr().out
    runs = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs").glob("*.json"))]
    # the loader-fed variant runs once, with its own (longer) window
    assert sorted((run["variant"], run["run"], run["timed_batches"]) for run in runs) == [
        (variants[1], 1, 2), (variants[0], 1, 1), (variants[0], 2, 1)]  # fmt: skip
    assert all(run["images_per_s"] > 0 and run["compiles_while_timed"] == 0 for run in runs)
    limits = json.loads((tmp_path / "limits.json").read_text())
    assert limits["limits"]["matmul_tflops"] > 0 and limits["environment"]["torch"] == torch.__version__
    flops = limits["flops_per_image"]  # the adversarial step counts D's passes on top of the supervised step's
    assert float(flops["0.01"]) > float(flops["0.0"]) > 0
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in printed
    for variant, count in zip(variants, [2, 1], strict=True):  # runs, median and range, TFLOP/s, MFU
        row = rf"\| {re.escape(variant)} \| {count} \| [\d.]+ \| [\d.]+-[\d.]+ \| [\d.e-]+ \| [\d.]+% \|"
        assert re.search(row, table)
    assert "loader-fed / in-memory" not in table  # its in-memory twin did not run
    assert "adversarial / supervised" not in table


def test_gpu_benchmark_variant_that_fails_leaves_the_others_measured(capsys, tmp_path):
    # one GPU call measures everything: a failing variant (here the loader, on a corrupt label file) must not
    # cost the other variants' runs, and the call must still end in an error naming it
    from seg_gan.bench.__main__ import main as bench
    from seg_gan.data.synthetic import write_synthetic_cityscapes

    frames = write_synthetic_cityscapes(tmp_path / "frames", (96, 128), {"train": 1, "val": 1}, seed=0)
    for label in (frames / "gtFine" / "train").rglob("*_labelIds.png"):
        label.write_bytes(b"not a png")
    variants = ["bf16+channels_last, Cityscapes loader", "bf16+channels_last, supervised (no D)"]
    with pytest.raises(SystemExit, match=r"1 variant\(s\) failed: bf16\+channels_last, Cityscapes loader"):
        bench([*GPU_CPU, "--root", str(frames), "--out", str(tmp_path / "out"), "--variants", *variants])
    table = (tmp_path / "out" / "table.md").read_text()
    assert re.search(r"\| bf16\+channels_last, supervised \(no D\) \| 2 \|", table)  # both runs, after the failure
    assert "- failed: bf16+channels_last, Cityscapes loader (run 1, " in table
    assert "Cityscapes loader |" not in table


def test_gpu_benchmark_time_limit_starts_no_run_after_it_and_says_so(capsys, tmp_path):
    from seg_gan.bench.__main__ import main as bench

    bench([*GPU_CPU, "--out", str(tmp_path), "--time-limit", "0", "--variants", "fp32"])  # asked for: no error
    assert not list((tmp_path / "runs").glob("*.json"))
    table = (tmp_path / "table.md").read_text()
    assert "- stopped early by the time limit of 0 s: no run started after it" in table
    assert table.strip() in capsys.readouterr().out


def test_gpu_benchmark_sigterm_ends_the_call_with_the_table(tmp_path):
    # what `timeout` does to a GPU session that runs long: SIGTERM to the whole process group. It kills the
    # loader's workers, so the run in progress ends in an error; that error once counted as the variant's failure,
    # and the next variant's Trainer cleared the signal, so the call ran on to its end and a session lost all
    out = tmp_path / "out"
    variants = ["bf16+channels_last, Cityscapes loader", "fp32"]
    args = list(GPU_CPU)
    args[args.index("--loader-steps") + 1] = "100000"  # the loader-fed run lasts until the signal
    command = [sys.executable, "-u", "-m", "seg_gan.bench", *args, "--out", str(out), "--variants", *variants]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    printed = []
    for line in process.stdout:  # the loader-fed fit has started once its Trainer loads the loader
        printed.append(line)
        if "Loading `train_dataloader`" in line and any("FLOPs per image" in p for p in printed):
            break
    time.sleep(3)  # its workers are up and feeding
    os.killpg(process.pid, signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    printed = "".join(printed) + rest
    assert process.returncode != 0 and "error: stopped by SIGTERM" in printed
    table = (out / "table.md").read_text()
    assert "- stopped early by SIGTERM" in table and "failed" not in table
    assert not list((out / "runs").glob("*.json"))  # fp32 (three runs left) never started


def test_gpu_benchmark_failure_line_survives_errors_without_a_message():
    # torch.compile's internals raise bare AssertionErrors: describing one must not end the GPU call
    from seg_gan.bench.gpu_table import failure

    assert failure(AssertionError()) == "AssertionError"
    two_lines = RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    assert failure(two_lines) == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"


def test_sync_audit_table_splits_set_up_first_batch_and_steady_state():
    # the H200 audit listed 597 synchronisations at one torch line over 30 batches without saying when: moving
    # the model at set-up costs once, one in every step costs every batch
    from seg_gan.bench.gpu_table import REPO, sync_table

    torch_line, repo_line = "/opt/venv/lib/python3.12/site-packages/torch/module.py:1", f"{REPO}/seg_gan/guards.py:113"
    places = [torch_line] * 3 + ["apply.py:104", torch_line] + ["apply.py:104"] * 6 + [repo_line]
    text = sync_table(places, [3, 5, 7, 9])  # 4 batches: 3 synchronisations before batch 0, 2 in it, 2 in each later
    rows = {line.split()[-1]: line.split()[:3] for line in text.splitlines()[2:]}
    assert text.startswith("host-device synchronisations by source line over 4 training batches")
    assert rows == {"torch/module.py:1": ["3", "1", "0.00"], "apply.py:104": ["0", "1", "2.00"],
                    "seg_gan/guards.py:113": ["0", "0", "0.33"]}  # fmt: skip


def test_drained_loader_drops_the_prefetched_batches_once():
    from seg_gan.bench.feed import Drained

    drained = Drained(DataLoader(list(range(10)), batch_size=1), warmup=2, drop=3)
    assert len(drained) == 7 and [int(batch) for batch in drained] == [0, 1, 5, 6, 7, 8, 9]


class SlowItems(Dataset):
    """Each item takes 0.1 s of a worker (sleeping: the count of free cores does not matter)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict:
        time.sleep(0.1)
        return {"image": torch.zeros(1)}


def test_loader_rate_times_whole_rounds_after_the_first():
    # 4 workers of 2 items at 0.1 s each: 40 images/s. Timed from the first batch, the other 3 batches of the first
    # round came free: 22 images in 0.4 s, 55 images/s
    from seg_gan.bench.data import loader_rate

    assert loader_rate(DataLoader(SlowItems(), batch_size=2, num_workers=4)) == pytest.approx(40, rel=0.2)


def test_data_benchmark_names_the_worker_count_that_reaches_the_step_rate(capsys):
    from seg_gan.bench.__main__ import main as bench

    bench(["data", "--frames", "2", "--frame-size", "96", "128", "--crop", "64", "64", "--images", "8", "--batch", "2",
           "--workers", "0", "1", "--repeats", "1", "--target-images-per-s", "1e6"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "training loader, batch 2, 0 workers" in printed and "training loader, batch 2, 1 workers" in printed
    assert re.search(r"no measured worker count reaches 1000000.0 images/s; .* about \d+ workers", printed)


def test_data_benchmark_sigterm_ends_the_call_with_the_passes_that_finished(tmp_path):
    # a GPU session's data step, cut off at its time limit, once printed nothing: the table came only at the end
    options = "--frames 2 --frame-size 96 128 --crop 64 64 --images 8 --batch 2 --workers 0 1 --repeats 100000"
    command = [sys.executable, "-u", "-m", "seg_gan.bench", "data", *options.split(), "--target-images-per-s", "1e6"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    printed, deadline = [], threading.Timer(120, os.killpg, (process.pid, signal.SIGKILL))
    deadline.start()  # a call that never prints its passes fails here instead of hanging
    for line in process.stdout:  # every row has one finished pass once the second round begins
        printed.append(line)
        if line.startswith("pass 2/100000: training loader, batch 2, 1 workers"):
            break
    os.killpg(process.pid, signal.SIGTERM)  # as `timeout` does: the loader's workers get it too
    rest, _ = process.communicate(timeout=60)
    deadline.cancel()
    printed = "".join(printed) + rest
    assert process.returncode != 0 and "error: stopped by SIGTERM" in printed
    table = printed[printed.index("measurement") :]
    for row in ("bare PIL", "training pipeline, 1 worker", "training loader, batch 2, 0 workers",
                "training loader, batch 2, 1 workers"):  # fmt: skip
        assert re.search(re.escape(row) + r".* +\d+\.\d\d\n", table)
    assert "no measured worker count reaches 1000000.0 images/s" in table


@pytest.mark.slow  # its header's CPU smoke run, from the repository root as documented: about 70 s
def test_gpu_session_script_runs_each_step_on_a_cpu_under_a_quoted_tmpdir(tmp_path, tmp_path_factory):
    # the device call's script: a fault here is found only on a lent GPU, where minutes are scarce
    temp = tmp_path_factory.mktemp("'")  # the frames' folder is made under TMPDIR and must reach Python as it is;
    # a short path, as loader workers put sockets there (at most 107 characters)
    env = os.environ | {"TMPDIR": str(temp), "BUDGET": "360", "FRAMES": "2", "FRAME_SIZE": "128 256",
                        "EXTRA_GPU_ARGS": "--device cpu --crop 64 64 --encoder resnet18 --steps 1 --warmup 1 --batch 1 "
                        "--repeats 1 --workers 1 --loader-steps 2 --matmul-size 64 --conv-shape 1 8 16 16 --variants "
                        "fp32 bf16+channels_last",
                        "EXTRA_DATA_ARGS": "--crop 64 64 --images 8 --batch 2 --workers 1"}  # fmt: skip
    out = tmp_path / "out"
    # BUDGET 360: the script ends by about 365 s whatever hangs (its own timeouts), inside this test's 420
    done = subprocess.run(["bash", "seg_gan/bench/gpu_session.sh", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=420)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drew 2 frames of 128 256" in done.stdout, done.stdout
    table = (out / "gpu" / "table.md").read_text()
    for variant in ["fp32", "bf16+channels_last"]:
        assert re.search(rf"^\| {re.escape(variant)} \| 1 \| \d+\.\d\d \|", table, re.M), table
    data = (out / "data.txt").read_text()  # the data benchmark reads the drawn frames
    assert "Data loading on 2 frames of 128x256" in data
    assert re.search(r"^training loader, batch 2, 1 workers +\d+\.\d\d$", data, re.M), data
    assert "passed" in (out / "fused_skip.txt").read_text()
    assert not list(temp.glob("tmp.*"))  # the frames' folder (mktemp -d) is removed at the end


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


def write_encoder(work):
    import segmentation_models_pytorch as smp

    encoder = smp.encoders.get_encoder("timm-tf_efficientnet_lite0", weights=None)
    torch.save(encoder.state_dict(), work / "effnet_lite0_encoder.pth")  # stands in for the ImageNet weights


def semi_bench(tmp_path):
    """(parse, the options every tiny run shares): CamVid of 2 training frames, random encoder weights."""
    import argparse

    from conftest import write_camvid

    from seg_gan.bench.semi import add_arguments

    root = write_camvid(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    work = tmp_path / "work"
    work.mkdir()
    write_encoder(work)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--root", str(root), "--work", str(work), "--seeds", "0", "--size", "32", "32", "--batches", "1"]
    tiny = ["--data.num_workers", "0", "--data.persistent_workers", "false", "--data.crop_size", "[32, 32]",
            "--data.batch_size", "2"]  # fmt: skip
    return parser.parse_args, common, tiny


def test_semi_run_whose_name_ran_before_reads_its_own_metrics(tmp_path):
    # semi_grid.sh's one-batch preparation and the grid's first run share a name (so a run folder): the
    # second run must read its own metrics file and finish (it crashed on two metrics.csv under one folder)
    from seg_gan.bench.semi import run

    parse, common, tiny = semi_bench(tmp_path)
    work = tmp_path / "work"
    for results in ["prepare", "grid"]:
        run(parse([*common, "--arms", "full", "--results", str(tmp_path / results), "--extra", *tiny]))
    assert len(list((work / "runs" / "full-1-16-seed0-b1").rglob("metrics.csv"))) == 2
    for results in ["prepare", "grid"]:
        saved = json.loads((tmp_path / results / "full-full-seed0-b1.json").read_text())  # the length in the name
        assert saved["batches"] == 1 and 0 <= saved["val_mIoU"] <= 1


def test_semi_deadline_keeps_out_only_the_runs_this_device_timed_too_long(tmp_path, capsys, monkeypatch):
    # a call cut at its limit loses its unfinished runs: an arm that trained longer here than the time left
    # is not started, nor one never timed here where the slowest arm that was would not fit; a timing from
    # another device, or a file without one, counts as none
    from seg_gan.bench import semi

    parse, common, tiny = semi_bench(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    earlier = {"labels": "full", "seed": 1, "batches": 1000, "trained_batches": 1000}
    for arm, device, seconds in [("full", semi.device_name(), 7200.0), ("full", semi.device_name(), 9000.0),
                                 ("full", semi.device_name(), None), ("full-t", "Another GPU", 1e9)]:  # fmt: skip
        (results / f"{arm}-{seconds}.json").write_text(json.dumps(earlier | {
            "arm": arm, "device": device, "train_s": seconds}))  # fmt: skip
    soon = ["--results", str(results), "--deadline", str(time.time() + 3600), "--extra", *tiny]  # 3600 s left
    at = common.index("--batches") + 1
    common[at] = "1000"  # full's fastest run here, 7.2 s a batch, would take 7200 s: not started, nothing written
    why = "full seed 0 not started (--deadline): "
    semi.run(parse([*common, "--arms", "full", *soon]))
    assert why + "its fastest earlier run here trained 7200 s" in capsys.readouterr().out
    semi.run(parse([*common, "--arms", "full", "--tag=-t", *soon]))  # timed on another device only: the slowest
    never = "it was never timed here, and the slowest arm that was (full) trained 7200"
    assert why.replace("full", "full-t") + never in capsys.readouterr().out
    semi.run(parse([*common, "--arms", "full", *soon[:2], "--deadline", str(time.time() - 60)]))
    assert why + "the deadline passed 60 s ago" in capsys.readouterr().out
    assert not list(results.glob("*seed0*")) and not (tmp_path / "work" / "camvid-32x32").exists()  # no setup
    common[at] = "1"  # 7.2 s fits, for full and for the arm never timed here
    for tag in ["", "-t"]:
        semi.run(parse([*common, "--arms", "full", f"--tag={tag}", *soon]))
        assert (results / f"full{tag}-full-seed0-b1.json").is_file()
    for bad in ["600", "1.7e12", "nan"]:  # a duration, milliseconds, nothing: no deadline that means anything
        with pytest.raises(SystemExit, match="--deadline .* is not a time"):
            semi.run(parse([*common, "--arms", "full", "--results", str(results), "--deadline", bad]))
    # time passes during the setup: checked again right before the run starts
    answers = iter([None, "the call ends"])
    monkeypatch.setattr(semi, "too_late", lambda *args: next(answers))
    semi.run(parse([*common, "--arms", "full", "--seeds", "2", *soon]))
    assert "full seed 2 not started (--deadline): the call ends" in capsys.readouterr().out
    assert not list(results.glob("*seed2*"))


@pytest.mark.slow  # the grid's one-batch preparation at the study's size, then 3 processes
def test_semi_grid_passes_its_deadline_to_every_run_and_refuses_a_malformed_one(tmp_path):
    from conftest import write_camvid

    tmp_path = tmp_path / 'a "b" $HOME `c`'  # the runs get the paths as they are, whatever they hold
    tmp_path.mkdir()
    root = write_camvid(tmp_path / "camvid", {"train": 23, "val": 1, "test": 1})
    names = (REPO / "configs" / "splits" / "camvid_1-16_balanced.txt").read_text().split()
    for folder in ["train", "trainannot"]:  # the labeled list's frame names, so the grid's arms build
        for path, name in zip(sorted((root / folder).iterdir()), names, strict=True):
            path.rename(path.with_stem(name))
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SEG_GAN_SEMI_")}
    env = clean | {"SEG_GAN_SEMI_ARMS": "supervised hung", "SEG_GAN_SEMI_SEEDS": "0", "SEG_GAN_SEMI_BATCHES": "1",
                   "SEG_GAN_SEMI_WORK": str(tmp_path / "work"),
                   "SEG_GAN_SEMI_RESULTS": str(tmp_path / "results")}  # fmt: skip
    grid = ["bash", str(REPO / "seg_gan/bench/semi_grid.sh"), str(root), "1-16"]
    for value in ["in 10 min", "600"]:  # a duration would let every run fail on its own
        bad = subprocess.run(grid, cwd=tmp_path, env=env | {"SEG_GAN_SEMI_DEADLINE": value}, capture_output=True,
                             text=True)  # fmt: skip
        assert bad.returncode == 2 and f"SEG_GAN_SEMI_DEADLINE={value}: expected whole seconds" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid"]  # refused before any work
    # a deadline already passed: no run starts, each says why, and the grid still exits 0
    (tmp_path / "work").mkdir()
    write_encoder(tmp_path / "work")
    past = str(int(time.time()) - 60)
    done = subprocess.run(grid, cwd=tmp_path, env=env | {"SEG_GAN_SEMI_DEADLINE": past}, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "failed:" not in done.stdout  # every run parsed its paths and deadline
    for run in ["supervised seed 0", "hung seed 0", "full seed 0"]:
        assert f"{run} not started (--deadline): the deadline passed" in done.stdout
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").glob("*.json")) == []


def test_semi_result_records_the_batches_a_skipped_step_added(tmp_path):
    # the length is set as optimizer steps; a non-finite loss skips a step without counting it, so the run
    # trains on past its nominal length: the file must say so, and the table must name the run
    from seg_gan.bench.semi import run
    from seg_gan.bench.semi_table import tables

    parse, common, tiny = semi_bench(tmp_path)
    common[common.index("--batches") + 1] = "2"
    results = tmp_path / "results"
    all_labeled = ["--data.labeled_list", "null", "--data.labeled_fraction", "1.0"]  # 2 frames: no 1/16 list
    for tag, discriminator in [("clean", "TinyDiscriminator"), ("nan", "NaNOnceDiscriminator")]:
        run(parse([*common, "--arms", "adversarial", f"--tag=-{tag}", "--results", str(results), "--extra",
                   *tiny, *all_labeled, "--model.discriminator", f"custom_parts.{discriminator}"]))  # fmt: skip
    clean, skipped = (json.loads((results / f"adversarial{tag}-1-16-seed0-b2.json").read_text())
                      for tag in ("-clean", "-nan"))  # fmt: skip
    assert (clean["batches"], clean["trained_batches"], clean["skipped_steps"]) == (2, 2, 0)
    # max_steps 4: batches 0 (D skipped, G) and 1 (D, G) count 3 steps, so batch 2 runs too (5 counted)
    assert (skipped["batches"], skipped["trained_batches"], skipped["skipped_steps"]) == (2, 3, 1)
    table = tables(results)
    assert "adversarial-nan seed 0 (3 batches, 1 step skipped)" in table and "adversarial-clean seed 0 (" not in table


def test_semi_diagnostics_record_d_band_drift_and_mask_against_softmax(tmp_path):
    # the GPU grid keeps only the result files: D's course over the run must be in them, counted by hand here
    from seg_gan.bench.semi import diagnostics

    rows = ["epoch,step,train/d_accuracy,train/semi_mask_precision,train/softmax_mask_precision_same_coverage,"
            "val/mIoU",
            "0,9,0.95,,,",  # before self-training (semi_start 20): outside the band share
            "0,19,0.90,0.80,0.90,",  # mask less precise
            "0,29,0.70,0.90,0.90,",  # a tie is not less precise
            "0,29,,0.99,0.90,",  # more precise, the last step before the last quarter (steps 30 on)
            "0,30,,0.90,0.92,",  # less precise, the first step of the last quarter
            "0,39,0.86,nan,0.95,",  # an empty mask has no precision: not counted
            "0,45,,0.97,0.95,",  # more precise (no D figure logged in this row)
            "0,49,0.60,0.85,0.95,",  # less precise; 0.6 is in the band; last quarter: steps 30 to 39 and on
            "0,49,,,,0.5"]  # fmt: skip  # a validation row: no training figures
    csv = tmp_path / "metrics.csv"
    csv.write_text("\n".join(rows) + "\n")
    figures = diagnostics(csv, semi_start=20, batches=40)  # rounded to 4 places
    assert figures["d_accuracy"] == pytest.approx((0.95 + 0.90 + 0.70 + 0.86 + 0.60) / 5, abs=1e-4)
    assert figures["d_accuracy_in_band"] == pytest.approx(2 / 3, abs=1e-4)  # steps 29, 39, 49: 0.70, 0.60 in
    assert figures["d_accuracy_last_quarter"] == pytest.approx((0.86 + 0.60) / 2, abs=1e-4)  # steps >= 30
    assert figures["mask_less_precise_than_softmax"] == pytest.approx(3 / 6, abs=1e-4)  # of 6 rows with both
    assert figures["mask_less_precise_last_quarter"] == pytest.approx(2 / 3, abs=1e-4)  # steps 30, 45, 49
    assert figures["mask_minus_softmax_last_quarter"] == pytest.approx((-0.02 + 0.02 - 0.10) / 3, abs=1e-4)


@pytest.mark.parametrize("arms, extra", [
    # adversarial keeps its D; supervised gets one: two optimizer steps per batch, not one
    (["adversarial", "supervised"], ["--model.lambda_adv", "0.01"]),
    (["hung"], ["--model.d_every_n_batches", "2"]),  # 1.5 steps per batch
])  # fmt: skip
def test_semi_extra_options_that_change_the_run_length_are_refused(tmp_path, arms, extra):
    # the length is set as optimizer steps (--trainer.max_steps): another count per batch would train another
    # number of batches than the result file says. Refused before any arm trains, not when its turn comes.
    from seg_gan.bench.semi import run

    parse, common, tiny = semi_bench(tmp_path)
    with pytest.raises(SystemExit, match="changes the optimizer steps per batch"):
        run(parse([*common, "--arms", *arms, "--results", str(tmp_path / "out"), "--extra", *tiny, *extra]))
    assert not list((tmp_path / "out").glob("*.json"))
    assert not list((tmp_path / "work").rglob("metrics.csv"))  # nothing trained


def test_semi_result_of_another_length_is_refused_not_skipped(tmp_path):
    # a result file named before names held the length must not pass for the run asked for
    import argparse

    from seg_gan.bench.semi import add_arguments, already_run, run, run_name

    assert run_name("cutmix", "1-16", 0, 1000) == "cutmix-1-16-seed0"  # the study's length: names as before
    assert run_name("cutmix-x", "1-16", 3, 4000) == "cutmix-x-1-16-seed3-b4000"
    results = tmp_path / "results"
    results.mkdir()
    old = results / "cutmix-1-16-seed0.json"
    old.write_text(json.dumps({"arm": "cutmix", "batches": 2000}))
    assert already_run(old, 2000) and not already_run(results / "supervised-1-16-seed0.json", 1000)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    work = tmp_path / "work"
    options = ["--root", str(tmp_path / "camvid"), "--work", str(work), "--results", str(results),
               "--arms", "supervised", "cutmix", "--seeds", "0"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"cutmix-1-16-seed0.json holds a run of 2000 batches, not the 1000"):
        run(parser.parse_args(options))
    assert not work.exists() and sorted(p.name for p in results.iterdir()) == [old.name]  # refused before any work


def test_semi_results_record_the_code_they_ran():
    from seg_gan.bench.semi import code_version

    version = code_version()  # the tests run from a git checkout (a clean clone in CI)
    assert version is not None and re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", version), version


def test_semi_result_files_name_no_folder_of_the_machine_that_ran_them(tmp_path):
    from seg_gan.bench.semi import REPO as BENCH_REPO
    from seg_gan.bench.semi import portable

    work = tmp_path / "semiwork"
    args = f"--config {BENCH_REPO}/configs/camvid_semi.yaml --data.root {work}/camvid-240x320 --x {work}/runs/a"
    assert portable(args, work) == (
        "--config <repo>/configs/camvid_semi.yaml --data.root <work>/camvid-240x320 --x <work>/runs/a"
    )


def test_semi_tables_from_result_files_with_paired_intervals(tmp_path):
    from seg_gan.bench.semi_table import interval, tables

    def write(arm, labels, seed, val, test, batches=1000, diagnostics=None):
        iou = {"Sky": val, "Bicyclist": float("nan")}
        result = {"arm": arm, "labels": labels, "seed": seed, "val_mIoU": val, "test_mIoU": test, "val_iou": iou,
                  "test_iou": iou, "batches": batches,
                  "diagnostics": diagnostics or ({"semi_mask_precision": 0.9} if arm == "cutmix" else {})}  # fmt: skip
        (tmp_path / f"{arm}-{labels}-seed{seed}-b{batches}.json").write_text(json.dumps(result))

    for seed, (base, mixed) in enumerate([(0.50, 0.56), (0.52, 0.57), (0.51, 0.55)]):
        write("supervised", "1-16", seed, base, base - 0.01)
        write("cutmix", "1-16", seed, mixed, mixed)
    write("full", "full", 0, 0.61, 0.60)
    write("error-probe300", "1-16", 0, 0.40, 0.40, batches=300)  # a shorter probe: shown, never paired
    for seed, (base, mixed) in enumerate([(0.53, 0.55), (0.54, 0.57)]):  # a tagged pair at another length
        write("supervised-len2000", "1-16", seed, base, base, batches=2000)
        write("cutmix-len2000", "1-16", seed, mixed, mixed, batches=2000)
    write("cutmix", "1-16", 0, 0.58, 0.58, batches=2000)  # untagged at 2000: no supervised run of its own
    for seed, tagged in enumerate([0.40, 0.42]):  # a supervised probe: no arm to compare, so no difference
        write("supervised-x", "1-16", seed, tagged, tagged)
    write("confidence", "1-16", 0, 0.50, 0.50)  # no diagnostics logged (no hidden labels): no mask row
    s4gan = {"semi_mask_coverage": 0.0, "d_accuracy": 0.5, "d_accuracy_last_quarter": 0.8, "d_accuracy_in_band": 0.25}
    write("s4gan", "1-16", 0, 0.50, 0.49, diagnostics=s4gan)
    late = {"semi_mask_precision": 0.96, "mask_minus_softmax_last_quarter": 0.0126,
            "mask_less_precise_last_quarter": 0.04}  # fmt: skip
    write("hung-noise", "1-16", 0, 0.50, 0.49, diagnostics=late)
    for seed, lead in enumerate([0.02, -0.01, 0.0], start=1):  # D's mask as the run ends, per seed: 1 of 3 above
        write("error", "1-16", seed, 0.5, 0.5, diagnostics={"mask_minus_softmax_last_quarter": lead})
    main, classes, masks = tables(tmp_path).strip().split("\n\n")[1:4]  # after the heading
    rows = {line.split(" | ")[0].strip("| "): line for line in (main + "\n" + classes).splitlines()}
    assert "| 0,1,2 | 51.0 ± 1.0 | 50.0 ± 1.0 |" in rows["supervised"]
    # paired val differences 6, 5, 4 points: mean 5, t(0.975, 2) = 4.303, sem = 1 / sqrt(3)
    mean, low, high = interval([0.06, 0.05, 0.04])
    assert (mean, round(low, 4), round(high, 4)) == (pytest.approx(0.05), 0.0252, 0.0748)
    assert "+5.0 [+2.5, +7.5] 3/3 |" in rows["cutmix"]  # clear of zero, but 3 pairs claim nothing (5 do)
    assert "| +50% / +60% |" in rows["cutmix"]  # (56 - 51) / (61 - 51) on val; (56 - 50) / (60 - 50) on test
    assert rows["full"].startswith("| full | 0 | 61.0 | 60.0 |")
    assert rows["supervised-x"].endswith("| 0,1 | 41.0 ± 1.4 | 41.0 ± 1.4 |  |  |  |")
    assert rows["Bicyclist"].endswith("| - | - | - |")  # nan: absent in every run
    cutmix = "| cutmix | 0.900 | (the mask itself) | - | (the mask itself) | (the mask itself) | (the mask itself) |"
    assert f"{cutmix} - | - | - |" in masks  # the teacher's softmax: no comparison, also not in the last quarter
    assert "| confidence |" not in masks
    assert "| hung-noise | 0.960 | - | - | - | +0.013 | 0.040 | - | - | - |" in masks  # a late gain keeps its sign
    assert "| error | - | - | - | - | +0.003 (ahead on 1 of 3 seeds) | - |" in masks  # a tie is not ahead
    # no precision (never selected); the band figures come from the diagnostics, absent ones read "-"
    assert "| s4gan | (empty mask) | (empty mask) | 0.000 | - | - | - | 0.500 | 0.800 | 0.250 |" in masks
    assert rows["error-probe300 (300 batches)"] == "| error-probe300 (300 batches) | 0 | 40.0 | 40.0 |  |  |  |"
    # the tagged pair pairs with its own supervised runs (differences 2 and 3 points), not the 1000-batch ones
    assert "| 0,1 | 56.0 ± 1.4 | 56.0 ± 1.4 | +2.5 [-3.9, +8.9] 2/2 |" in rows["cutmix-len2000 (2000 batches)"]
    assert rows["cutmix (2000 batches)"].endswith("| 58.0 | 58.0 |  |  |  |")  # nothing of its length to pair
    assert rows["supervised-len2000 (2000 batches)"].endswith("|  |  |  |")
    assert list(rows).index("supervised-len2000 (2000 batches)") < list(rows).index("cutmix-len2000 (2000 batches)")


def test_semi_gap_closed_counts_the_seeds_an_arm_shares_with_supervised(tmp_path):
    # a grid cut short: supervised has 5 seeds, the arm 2; unpaired means would call the arm's gain a loss
    from seg_gan.bench.semi_table import tables

    def write(arm, labels, seed, miou):
        result = {"arm": arm, "labels": labels, "seed": seed, "val_mIoU": miou, "test_mIoU": miou, "batches": 1000,
                  "val_iou": {"Sky": miou}, "test_iou": {"Sky": miou}, "diagnostics": {}}  # fmt: skip
        (tmp_path / f"{arm}-{labels}-seed{seed}.json").write_text(json.dumps(result))

    for seed, miou in enumerate([0.40, 0.42, 0.44, 0.46, 0.48]):
        write("supervised", "1-16", seed, miou)
    write("cutmix", "1-16", 0, 0.41)
    write("cutmix", "1-16", 1, 0.43)
    write("full", "full", 0, 0.60)
    row = next(line for line in tables(tmp_path).splitlines() if line.startswith("| cutmix |"))
    # +1.0 on seeds 0 and 1, whose supervised mean is 41.0: 1.0 / (60 - 41) = +5%, not (42 - 44) / 16 = -12%
    assert row.endswith("| +5% / +5% |")


@pytest.mark.parametrize("seeds, word", [(4, ""), (5, " gain")])
def test_semi_table_claims_a_gain_only_over_the_protocols_five_pairs(tmp_path, seeds, word):
    from seg_gan.bench.semi_table import tables

    for seed in range(seeds):  # the arm leads by 2.0-2.4 points on every seed: the interval is clear of zero
        for arm, miou in [("supervised", 0.50), ("confidence", 0.52 + seed / 1000), ("error", 0.48 - seed / 1000)]:
            iou = {"Sky": miou}
            result = {"arm": arm, "labels": "1-16", "seed": seed, "val_mIoU": miou, "test_mIoU": miou,
                      "batches": 1000, "val_iou": iou, "test_iou": iou, "diagnostics": {}}  # fmt: skip
            (tmp_path / f"{arm}-1-16-seed{seed}.json").write_text(json.dumps(result))
    rows = {line.split(" | ")[0]: line for line in tables(tmp_path).splitlines() if line.startswith("| ")}
    assert f" {seeds}/{seeds}{word} |" in rows["| confidence"]
    assert f" 0/{seeds}{word.replace('gain', 'loss')} |" in rows["| error"]


def test_semi_grid_runs_the_control_pairs_first_then_the_other_arms_seed_major(tmp_path):
    def plan(**env):
        clean = {key: value for key, value in os.environ.items() if not key.startswith("SEG_GAN_SEMI_")}
        found = subprocess.run(["bash", str(REPO / "seg_gan/bench/semi_grid.sh"), str(tmp_path), "1-16"], cwd=tmp_path,
                               env=clean | {"SEG_GAN_SEMI_DRY_RUN": "1"} | env, capture_output=True, text=True,
                               check=True)  # fmt: skip
        return found.stdout.split("\n")[:-1]

    grid = plan()
    control = [f"{arm} {seed}" for seed in range(5) for arm in ("supervised", "cutmix")]
    assert grid[:10] == control  # the control is read first: its 5 pairs before any other arm's run
    assert grid[10:18] == [f"{arm} 0" for arm in ("confidence", "error", "hung-noise", "hung", "s4gan", "adversarial",
                                                  "full")] + ["confidence 1"]  # fmt: skip
    assert len(grid) == len(set(grid)) == 43 and sum(run.startswith("full") for run in grid) == 3
    # without both control arms there is no control to put first: the arms as given, seed-major
    assert plan(SEG_GAN_SEMI_ARMS="hung supervised", SEG_GAN_SEMI_SEEDS="3 0") == [
        "hung 3", "supervised 3", "hung 0", "supervised 0", "full 0"]  # fmt: skip
    # any whitespace between the names: the control is still found and put first
    assert plan(SEG_GAN_SEMI_ARMS="hung\tcutmix\n supervised", SEG_GAN_SEMI_SEEDS="0")[:3] == [
        "supervised 0", "cutmix 0", "hung 0"]  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # a dry run prepares nothing


def test_ops_benchmark_counts_per_batch_and_leaves_views_out(tmp_path, capsys):
    import argparse
    from collections import Counter

    from conftest import write_camvid

    from seg_gan.bench.ops import add_arguments, launches, run

    assert launches(Counter({"view": 3, "detach": 2, "add": 2, "convolution": 1})) == 3
    _, _, tiny = semi_bench(tmp_path)  # encoder weights in tmp_path / "work"
    root = write_camvid(tmp_path / "camvid4", {"train": 4, "val": 1, "test": 1})
    (tmp_path / "two.txt").write_text("0016E5_00000\n0016E5_00001\n")  # 2 labeled, 2 unlabeled frames
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--root", str(root), "--work", str(tmp_path / "work"), "--size", "32", "32", "--warmup", "1",
              "--flops-crop", "32", "32", "--arms", "supervised", "cutmix"]  # fmt: skip
    # one loader worker: with none, each batch's random crop and flip would be counted in the step's ops
    extra = [*tiny, "--data.labeled_list", str(tmp_path / "two.txt"), "--data.num_workers", "1"]
    row = r"^\| ([\w-]+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.e+-]+) \| ([\d.]+) \| \d+ \|$"
    found = {}
    for window in ("1", "2"):
        run(parser.parse_args([*common, "--window", window, "--extra", *extra]))
        rows = re.findall(row, capsys.readouterr().out, re.M)
        found[window] = {arm: tuple(map(float, figures)) for arm, *figures in rows}
    assert list(found["1"]) == ["supervised", "cutmix"]
    # per batch: a window of two batches gives about each batch's op counts (they vary a little from batch
    # to batch on this tiny set), not their sum (the FLOPs always come from batches 1-2)
    for arm in ("supervised", "cutmix"):
        assert found["2"][arm][:2] == pytest.approx(found["1"][arm][:2], rel=0.05)
    (sup_ops, sup_launches, sup_ratio, sup_gflop, sup_flop_ratio) = found["1"]["supervised"]
    (cut_ops, cut_launches, cut_ratio, cut_gflop, cut_flop_ratio) = found["1"]["cutmix"]
    assert sup_ratio == sup_flop_ratio == 1.0  # the first arm is the reference
    assert cut_ratio == round(cut_launches / sup_launches, 2) > 1  # the teacher's passes and the mix
    assert cut_flop_ratio == pytest.approx(cut_gflop / sup_gflop, abs=0.01) and cut_flop_ratio > 1
    assert 0 < sup_launches < sup_ops and cut_launches < cut_ops  # views and detaches launch nothing


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
