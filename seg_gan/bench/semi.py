"""The semi-supervised study on CamVid: which way of using unlabeled images helps, against the field's
positive control and a supervised baseline trained on the same few labels.

    python -m seg_gan.bench semi --root /path/to/CamVid --labels 1-16 --arms supervised cutmix --seeds 0 1 2 3 4 \
        --batches 2000                                        # the study's length (semi_grid.sh runs it)
    python -m seg_gan.bench semi --table-only                 # the tables from the committed result files
    python -m seg_gan.bench semi --root /path/to/CamVid --make-splits configs/splits

Every (arm, labels, seed) run trains `--batches` batches of 8 labeled (+ 8 unlabeled) images, evaluates its final
weights once on val and once on test, and writes one JSON into `--results` (default
`seg_gan/bench/results/semi/`, committed: the study accumulates across machines), named by arm, labels, seed and
(if not 1000) batches; runs whose file exists are skipped, and with `--deadline` those that this device's earlier
files say cannot finish in time. Choices are made on val; test is for the final table only. Seeds are paired: a
seed gives every arm the same initialisation and data order. G: Unet with an ImageNet EfficientNet-Lite0 encoder
(offline, from the `experiments` extra); the rest from configs/camvid_semi.yaml. CamVid is written once at
`--size` (default 240x320: images antialiased, labels nearest) into `<work>/camvid-<H>x<W>`, where training and
evaluation run. The labeled subsets are the class-balanced lists of configs/splits/ (`--make-splits` draws them).
"""

import argparse
import datetime
import json
import math
import platform
import statistics
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from seg_gan.bench.semi_table import BATCHES, load, tables
from seg_gan.cli import build_cli
from seg_gan.data.camvid import CAMVID_CLASSES
from seg_gan.data.io import read_image, read_label
from seg_gan.data.splits import choose_balanced

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "semi"
LABELS = {"1-32": 11, "1-16": 23, "1-8": 46}  # labeled images of CamVid's 367 training frames
NO_UNLABELED = ["--data.unlabeled_stream", "false"]
ARMS = {  # arm -> model/data options on top of configs/camvid_semi.yaml (Hung et al.'s settings)
    "supervised": ["--model.lambda_adv", "0", *NO_UNLABELED],
    "adversarial": NO_UNLABELED,  # Hung et al.'s labeled adversarial term only
    "hung": [],  # Hung et al. 2018 semi-supervised
    # Hung's arm with the stabiliser picked by 300-batch probes (bench README): keeps D's accuracy in 0.6-0.85
    "hung-noise": ["--model.instance_noise", "0.3"],
    # error-predicting D (Ke et al. 2020, Samson et al. 2019) in Hung's scheme: sigmoid(D) = P(G right)
    "error": ["--model.discriminator_target", "correct", "--model.mask_threshold", "0.9"],
    # s4GAN as published for Cityscapes (Mittal et al. 2019; their code's README): no adversarial term,
    # Dropout2d 0.5 in the image D, D lr 1e-5, threshold 0.7, self-training from the first batch
    "s4gan": ["--model.semi_method", "s4gan", "--model.discriminator", "image", "--model.lambda_adv", "0",
              "--model.d_dropout", "0.5", "--model.d_lr", "1e-5", "--model.mask_threshold", "0.7",
              "--model.lambda_semi", "1.0", "--model.lambda_fm", "0.1", "--model.semi_start", "0"],
    # the ablation of Hung's arm: its self-training, with G's own softmax instead of D's confidence
    "confidence": ["--model.semi_method", "confidence", "--model.lambda_adv", "0", "--model.mask_threshold", "0.9"],
    # the positive control (French et al. 2020): CutMix mean teacher with their squared-error consistency
    # (the default cutmix_consistency), from the first batch
    "cutmix": ["--model.semi_method", "cutmix", "--model.lambda_adv", "0", "--model.mask_threshold", "0.97",
               "--model.lambda_semi", "1.0", "--model.semi_start", "0", "--model.ema_decay", "0.99"],
    "full": ["--model.lambda_adv", "0", *NO_UNLABELED],  # the ceiling: every training label
}  # fmt: skip
DIAGNOSTICS = ["train/semi_mask_precision", "train/semi_mask_coverage", "train/softmax_mask_precision_same_coverage",
               "train/semi_mask_ratio", "train/d_accuracy", "train/loss_d_hung_scale"]  # fmt: skip
# 1/16 of CamVid is 2 batches per pass: an epoch of 50 passes gives the same batches (and in these runs, with
# persistent workers, the same weights) as 50 one-pass epochs, without the loader's restart and wait every 2 batches
PASSES_PER_EPOCH = 50
# on a GPU, batches from pinned memory: Lightning's non-blocking copy then need not wait (as the GPU configs do)
PINNED = ["--data.pin_memory", "true"] if torch.cuda.is_available() else []
D_BAND = (0.6, 0.85)  # D accuracy of a D that neither wins at once nor is fooled (the band for Hung's D)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="CamVid folder (SegNet layout, with test/ and testannot/)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--labels", default="1-16", choices=list(LABELS), help="labeled subset (configs/splits)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--batches", type=int, default=BATCHES, help="training batches per run (the study, semi_grid.sh, runs 2000)"
    )
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--semi-start", type=int, help="first self-training batch (default: batches // 4)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI options for every run")
    parser.add_argument("--tag", default="", help="suffix of the arm's name in the results (probes: --extra)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON files go")
    parser.add_argument("--work", type=Path, default=Path("bench_results/semi"), help="scaled data, logs")
    parser.add_argument("--table-only", action="store_true", help="only print the tables from --results")
    parser.add_argument("--make-splits", type=Path, help="draw the class-balanced labeled lists into this folder")
    parser.add_argument("--deadline", type=float, help="seconds since the epoch (date +%%s) at which the call ends: "
                        "no run starts whose arm trained longer than the time left on this device before "
                        "(--results; an arm never timed here counts as the slowest that was)")  # fmt: skip


def encoder_weights(work: Path) -> Path:
    path = work / "effnet_lite0_encoder.pth"
    if not path.is_file():
        from seg_gan.models.convert import main as convert

        convert(["efficientnet-lite0", str(path)])
    return path


def scaled_copy(root: Path, out: Path, size: list[int]) -> Path:
    """Writes CamVid at `size` into `out/camvid-HxW` (once; a finished copy has a DONE file)."""
    copy = out / f"camvid-{size[0]}x{size[1]}"
    if (copy / "DONE").is_file():
        return copy
    folders = ("train", "trainannot", "val", "valannot", "test", "testannot")
    files = [path for folder in folders for path in sorted((root / folder).glob("*.png"))]
    if not files:
        raise SystemExit(f"error: no CamVid PNGs under {root}/train, trainannot, val, valannot (SegNet layout).")
    for path in tqdm(files, desc=f"scaling CamVid to {size[0]}x{size[1]}", unit="img"):
        label = path.parent.name.endswith("annot")
        if label:  # class ids [1, H, W] (palette PNGs give their indices); nearest: no new ids
            ids = torch.from_numpy(read_label(path))[None]
            scaled = TF.resize(ids, size, interpolation=TF.InterpolationMode.NEAREST_EXACT)[0]  # [H, W] uint8
        else:
            scaled = TF.resize(read_image(path), size, antialias=True).permute(1, 2, 0)  # [H, W, 3] uint8
        (copy / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(scaled.contiguous().numpy()).save(copy / path.parent.name / path.name)
    (copy / "DONE").write_text(f"{root} scaled to {size}\n")
    return copy


def make_splits(root: Path, folder: Path, min_pixels: int = 100) -> None:
    """configs/splits/camvid_<labels>_balanced.txt: seeded draws (seed 0) in which each of the 11 classes
    covers at least `min_pixels` pixels in at least two labeled frames, spread over the 3 training
    sequences in proportion to their sizes (seg_gan.data.splits.choose_balanced)."""
    presence, groups = {}, {}
    for path in sorted((root / "trainannot").glob("*.png")):
        counts = torch.bincount(torch.from_numpy(read_label(path)).flatten().long(), minlength=256)
        presence[path.stem] = {c for c in range(len(CAMVID_CLASSES)) if counts[c] >= min_pixels}
        groups[path.stem] = path.stem.split("_")[0]
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in LABELS.items():
        names, tries = choose_balanced(presence, groups, count, len(CAMVID_CLASSES), seed=0)
        (folder / f"camvid_{name}_balanced.txt").write_text("\n".join(names) + "\n")
        print(f"camvid_{name}_balanced.txt: {len(names)} frames (draw {tries} of seed 0 met the condition)")


def run_name(arm: str, labels: str, seed: int, batches: int) -> str:
    """`cutmix-1-16-seed0`, or `cutmix-1-16-seed0-b4000` for another length: runs of two lengths never
    share a result file (an existing one is skipped) or a run folder."""
    return f"{arm}-{labels}-seed{seed}" + ("" if batches == BATCHES else f"-b{batches}")


def already_run(path: Path, batches: int) -> bool:
    """Whether `path` holds this run's result. Exits with an error where it holds another length (a file
    named before names held the length): skipping it would pass that run off as this one."""
    if not path.is_file():
        return False
    found = json.loads(path.read_text()).get("batches")
    if found != batches:
        raise SystemExit(f"error: {path} holds a run of {found} batches, not the {batches} asked for; skipping "
                         "it would report that run as this one. Expected --batches to match it, or --results to "
                         "name a folder without it.")  # fmt: skip
    return True


def configure(options: argparse.Namespace, arm: str, seed: int, weights: Path):
    """(the run's LightningCLI, built but not run; its arguments). Exits with an error where `--extra` changes
    the optimizer steps per batch: the length is set as --trainer.max_steps, so another count per batch would
    train another number of batches than --batches (and the result file) says."""
    run_dir = options.work / "runs" / run_name(arm + options.tag, options.labels, seed, options.batches)
    semi_start = options.batches // 4 if options.semi_start is None else options.semi_start
    labels = ["--data.labeled_fraction", "1.0"] if arm == "full" else [
        "--data.labeled_list", str(REPO / "configs" / "splits" / f"camvid_{options.labels}_balanced.txt")]  # fmt: skip
    args = [
        "--config", str(REPO / "configs" / "camvid_semi.yaml"), "--data.root", str(options.data_root),
        "--seed_everything", str(seed), "--model.encoder_name", "timm-tf_efficientnet_lite0",
        "--model.encoder_weights", str(weights), "--model.semi_start", str(semi_start), *labels,
        "--data.scale_range", "[1.0, 1.0]", "--data.eval_size", "null", "--data.test_split", "test",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(optimizer_steps(arm) * options.batches),
        "--trainer.check_val_every_n_epoch", "100000", "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(run_dir), "--trainer.log_every_n_steps", "10",
        "--trainer.enable_progress_bar", "false", "--data.persistent_workers", "true",
        "--data.passes_per_epoch", str(PASSES_PER_EPOCH), *PINNED,
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir),
        *ARMS[arm], *options.extra,
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    hp = cli.model.hparams  # as built: ARMS, then --extra
    steps = 1 + (cli.model.discriminator is not None)
    if steps != optimizer_steps(arm) or (hp.d_every_n_batches, hp.g_every_n_batches) != (1, 1):
        raise SystemExit(f"error: --extra {' '.join(options.extra)!r} changes the optimizer steps per batch of arm "
                         f"{arm!r} (D built: {steps == 2}, d_every_n_batches {hp.d_every_n_batches}, g_every_n_batches "
                         f"{hp.g_every_n_batches}); --trainer.max_steps would then train another number of batches "
                         f"than --batches {options.batches}. Expected options that keep {optimizer_steps(arm)} "
                         "step(s) per batch.")  # fmt: skip
    return cli, args


def run_arm(options: argparse.Namespace, arm: str, seed: int, weights: Path, commit: str | None) -> dict:
    """Train one run and evaluate its final weights; `commit`: the code it runs, read before training (a
    commit made while it trains must not be recorded as the code that ran)."""
    cli, args = configure(options, arm, seed, weights)
    hp = cli.model.hparams
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    train_s = time.perf_counter() - start
    scores = {}
    for split, evaluate, metrics in [("val", cli.trainer.validate, cli.model.val_metrics),
                                     ("test", cli.trainer.test, cli.model.test_metrics)]:  # fmt: skip
        evaluate(cli.model, cli.datamodule)  # the final weights, once each
        result = metrics.compute()
        ious = dict(zip(result.class_names, result.iou.tolist(), strict=True))
        scores |= {f"{split}_mIoU": result.miou, f"{split}_iou": ious}
    logged = diagnostics(Path(cli.trainer.logger.experiment.metrics_file_path), hp.semi_start, options.batches)
    # a skipped step (non-finite loss, seg_gan.guards) is no optimizer step, so max_steps trains more batches
    trained = cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed
    return {
        "arm": arm + options.tag, "labels": options.labels, "seed": seed, "batches": options.batches,
        "trained_batches": trained, "skipped_steps": int(cli.model.guard.skipped_steps),
        "labeled_images": len(cli.datamodule.train_set), **scores, "diagnostics": logged,
        "train_s": round(train_s, 1), "device": device_name(), "torch": torch.__version__, "lightning": pl.__version__,
        "commit": commit, "date": datetime.date.today().isoformat(),
        "args": portable(" ".join(args), options.work),
    }  # fmt: skip


def device_name() -> str:
    """The GPU's name, else the CPU's: what a result file's `device` records and `--deadline` matches."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()


def too_late(results: Path, arm: str, batches: int, deadline: float) -> str | None:
    """Why a run of `arm` (with its tag) should not start now, the call ending at `deadline` (seconds since the
    epoch), or None: a run cut then is lost and slows those that can finish. Its training time: the arm's
    fastest earlier run on this device (by `device_name`; a CPU is often only `x86_64`) in `results` with
    `train_s` and `trained_batches`, scaled per batch to `batches`; never timed here: the slowest arm that
    was; nothing timed: it starts. Start, evaluation and another number of runs side by side come on top."""
    left, device, timed = deadline - time.time(), device_name(), {}
    if left <= 0:
        return f"the deadline passed {-left:.0f} s ago"
    for r in load(results):
        if r.get("device") == device and r.get("trained_batches") and r.get("train_s"):
            timed.setdefault(r["arm"], []).append(r["train_s"] / r["trained_batches"] * batches)
    if arm in timed and min(timed[arm]) > left:
        return f"its fastest earlier run here trained {min(timed[arm]):.0f} s at this length; {left:.0f} s are left"
    if arm not in timed and timed and (slowest := max((min(times), name) for name, times in timed.items()))[0] > left:
        return (f"it was never timed here, and the slowest arm that was ({slowest[1]}) trained {slowest[0]:.0f} s "
                f"at this length; {left:.0f} s are left")  # fmt: skip
    return None


def code_version() -> str | None:
    """The repository's commit (`git describe --always --dirty`), or None outside a git checkout."""
    found = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def portable(text: str, work: Path) -> str:
    """`text` with this machine's folders written as <work> and <repo>: the result files are committed."""
    return text.replace(str(work.resolve()), "<work>").replace(str(work), "<work>").replace(str(REPO), "<repo>")


def optimizer_steps(arm: str) -> int:
    """Optimizer steps per batch (what --trainer.max_steps counts): 2 where a D is built."""
    options = ARMS[arm]
    no_adversary = "--model.lambda_adv" in options and options[options.index("--model.lambda_adv") + 1] == "0"
    return 1 if no_adversary and "s4gan" not in options else 2


def diagnostics(metrics_csv: Path, semi_start: int, batches: int) -> dict[str, float]:
    """Means over the run's logged rows (its CSVLogger's file: an earlier run of the same name, such as
    semi_grid.sh's one-batch preparation, has its own version folder) of the GAN-health and mask figures;
    and, so that the result file alone shows D's course: the share of logged batches from `semi_start` on
    with D's accuracy in `D_BAND` (`d_accuracy_in_band`), D's mean accuracy over the last quarter of the
    `batches` (`d_accuracy_last_quarter`: drift), and the share of logged batches whose mask was strictly
    less precise than G's softmax at the same coverage (`mask_less_precise_than_softmax`), also over the last
    quarter alone with the mean precision difference there (`mask_less_precise_last_quarter`,
    `mask_minus_softmax_last_quarter`: a D that learns late shows only there)."""
    import csv

    rows = list(csv.DictReader(metrics_csv.open()))

    def number(row: dict, key: str) -> float | None:  # None: not logged in that row, or nan (nothing to count)
        value = float(row[key]) if row.get(key) else math.nan
        return None if math.isnan(value) else value

    means = {}
    for key in DIAGNOSTICS:
        values = [v for r in rows if (v := number(r, key)) is not None]
        if values:
            means[key.removeprefix("train/")] = round(statistics.mean(values), 4)
    # the CSV's step column counts batches (Lightning logs at the batches that stepped, not optimizer steps)
    accuracy = [(int(r["step"]), v) for r in rows if (v := number(r, "train/d_accuracy")) is not None]
    late = [v for step, v in accuracy if step >= semi_start]
    if late:
        means["d_accuracy_in_band"] = round(sum(D_BAND[0] <= v <= D_BAND[1] for v in late) / len(late), 4)
    last_quarter = batches - batches // 4  # the first batch of the run's last quarter
    if last := [v for step, v in accuracy if step >= last_quarter]:
        means["d_accuracy_last_quarter"] = round(statistics.mean(last), 4)
    pairs = [(int(r["step"]), a, b) for r in rows if (a := number(r, "train/semi_mask_precision")) is not None
             and (b := number(r, "train/softmax_mask_precision_same_coverage")) is not None]  # fmt: skip
    if pairs:
        means["mask_less_precise_than_softmax"] = round(sum(a < b for _, a, b in pairs) / len(pairs), 4)
    if last := [(a, b) for step, a, b in pairs if step >= last_quarter]:  # the mask as the run ends
        means["mask_less_precise_last_quarter"] = round(sum(a < b for a, b in last) / len(last), 4)
        means["mask_minus_softmax_last_quarter"] = round(statistics.mean(a - b for a, b in last), 4)
    return means


def run(options: argparse.Namespace) -> None:
    if options.make_splits:
        if options.root is None:
            raise SystemExit("error: --make-splits needs --root, the CamVid folder.")
        return make_splits(Path(options.root), options.make_splits)
    if not options.table_only:
        if options.root is None:
            raise SystemExit("error: --root: give the CamVid folder (SegNet layout: train/, trainannot/, val/ ...).")
        if options.deadline is not None and not 1e9 <= options.deadline < 1e10:  # a duration, ms, nan: refuse
            raise SystemExit(f"error: --deadline {options.deadline:.0f} is not a time; expected seconds since the "
                             "epoch, such as $(( $(date +%s) + 3600 )) for an hour from now.")  # fmt: skip
        labels = {arm: "full" if arm == "full" else options.labels for arm in options.arms}
        plan = [(seed, arm) for seed in options.seeds for arm in options.arms]  # seed-major: cut short, whole pairs
        paths = [options.results / f"{run_name(arm + options.tag, labels[arm], seed, options.batches)}.json"
                 for seed, arm in plan]  # fmt: skip
        done = [already_run(path, options.batches) for path in paths]  # every refusal before any work

        def late(seed: int, arm: str) -> bool:  # before the setup (none if nothing is to run) and each run
            why = options.deadline and too_late(options.results, arm + options.tag, options.batches, options.deadline)
            if why:
                print(f"{arm}{options.tag} seed {seed} not started (--deadline): {why}")
            return bool(why)

        for path in (path for path, skip in zip(paths, done, strict=True) if skip):
            print(f"{path} exists: skipped")
        todo = [(seed, arm, path) for (seed, arm), path, skip in zip(plan, paths, done, strict=True)
                if not skip and not late(seed, arm)]  # fmt: skip
        if todo:
            for folder in (options.work, options.results):
                folder.mkdir(parents=True, exist_ok=True)
            weights, commit = encoder_weights(options.work), code_version()
            options.data_root = scaled_copy(Path(options.root), options.work, options.size)
            torch.set_float32_matmul_precision("high")
        for arm in dict.fromkeys(arm for _, arm, _ in todo):
            configure(options, arm, options.seeds[0], weights)  # refuse any arm's --extra before any training
        for seed, arm, path in todo:
            if late(seed, arm):
                continue
            result = run_arm(options, arm, seed, weights, commit) | {"labels": labels[arm]}
            (part := path.with_suffix(".part")).write_text(json.dumps(result, indent=2) + "\n")
            part.replace(path)  # whole or absent: other runs read the folder meanwhile (--deadline, the table)
            print(f"{arm} seed {seed}: val mIoU {result['val_mIoU']:.4f}, {result['train_s'] / 60:.1f} min")
    print(tables(options.results))
