"""Semi-supervised experiment on CamVid: supervised / adversarial / adversarial+semi at 1/8 labels, and full labels.

Every (arm, seed) run writes `<out>/<arm>-seed<seed>.json`; runs already there are skipped, so the
grid can be run in pieces (`--arms`, `--seeds`) across sessions. The table is built from the files.
Generator: Unet with an ImageNet EfficientNet-Lite0 encoder (installed offline by the
`experiments` extra and converted with seg_gan.models.convert); everything else from
configs/camvid_semi.yaml, with 192x256 crops. CamVid is first written once at `--size` (default
240x320: images antialiased bilinear, labels nearest) into `<out>/camvid-<H>x<W>`, and training and
evaluation (mIoU included) run on that copy: smaller files, and the same protocol on every machine.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from seg_gan.cli import build_cli
from seg_gan.data.io import read_image, read_label

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "camvid_semi.yaml"
ARMS = {  # each arm differs from its neighbour in one switch; run in this order
    "supervised": ["--model.lambda_adv", "0", "--data.unlabeled_stream", "false"],
    "full": ["--model.lambda_adv", "0", "--data.unlabeled_stream", "false", "--data.labeled_fraction", "1.0"],
    "semi": [],
    "adversarial": ["--data.unlabeled_stream", "false"],
    # Mittal et al. 2019 with its paper values (not in the default grid; `--arms s4gan` runs it)
    "s4gan": [
        "--model.semi_method",
        "s4gan",
        "--model.discriminator",
        "image",
        "--model.mask_threshold",
        "0.6",
        "--model.lambda_semi",
        "1.0",
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", help="CamVid folder (SegNet layout); required unless --table-only")
    parser.add_argument("--out", type=Path, default=Path("bench_results/semi"), help="result folder")
    parser.add_argument("--arms", nargs="+", default=["supervised", "full", "semi", "adversarial"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=1000, help="training batches per run")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[240, 320],
        metavar=("H", "W"),
        help="CamVid is scaled to this size once, before any run",
    )
    parser.add_argument(
        "--semi-start",
        type=int,
        default=None,
        help="batch from which self-training is on (default: --batches // 4, as in Hung et al.)",
    )
    parser.add_argument("--table-only", action="store_true", help="only build the table from the result files")


def encoder_weights(out: Path) -> Path:
    path = out / "effnet_lite0_encoder.pth"
    if not path.is_file():
        from seg_gan.models.convert import main as convert

        convert(["efficientnet-lite0", str(path)])
    return path


def scaled_copy(root: Path, out: Path, size: list[int]) -> Path:
    """Writes CamVid at `size` into `out/camvid-HxW` (once; a finished copy has a DONE file)."""
    copy = out / f"camvid-{size[0]}x{size[1]}"
    if (copy / "DONE").is_file():
        return copy
    folders = ("train", "trainannot", "val", "valannot")
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


def run_arm(options: argparse.Namespace, arm: str, seed: int, weights: Path) -> dict:
    run_dir = options.out / "runs" / f"{arm}-seed{seed}"
    semi_start = options.batches // 4 if options.semi_start is None else options.semi_start
    optimizers = 1 if "--model.lambda_adv" in ARMS[arm] else 2  # global_step counts optimizer steps
    args = [
        "--config", str(REPO_CONFIG), "--data.root", str(options.data_root), "--seed_everything", str(seed),
        "--model.encoder_name", "timm-tf_efficientnet_lite0", "--model.encoder_weights", str(weights),
        "--model.semi_start", str(semi_start), "--data.scale_range", "[1.0, 1.0]",
        "--data.eval_size", "null",
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(options.batches * optimizers),
        "--trainer.check_val_every_n_epoch", "100000", "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(run_dir), "--trainer.log_every_n_steps", "10",
        "--trainer.enable_progress_bar", "false", "--data.persistent_workers", "true",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir),
        *ARMS[arm],
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    train_s = time.perf_counter() - start
    cli.trainer.validate(cli.model, cli.datamodule)
    scores = cli.model.val_metrics.compute()  # of the validate call above
    return {"arm": arm, "seed": seed, "val_mIoU": scores.miou, "train_s": round(train_s, 1),
            "batches": options.batches, "labeled_images": len(cli.datamodule.train_set),
            "args": " ".join(args)}  # fmt: skip


def table(out: Path) -> str:
    results = [json.loads(path.read_text()) for path in sorted(out.glob("*-seed*.json"))]
    order = ["supervised", "adversarial", "semi", "s4gan", "full"]
    by_arm = {arm: [r for r in results if r["arm"] == arm] for arm in order}
    mean = {arm: statistics.mean(r["val_mIoU"] for r in rs) for arm, rs in by_arm.items() if rs}
    lines = [
        "| arm | runs | val mIoU mean | spread (min-max) | std | share of 1/8-to-full gap closed | train time / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, rs in by_arm.items():
        if not rs:
            continue
        values = [r["val_mIoU"] for r in rs]
        gap = ""
        if "supervised" in mean and "full" in mean and arm in ("adversarial", "semi", "s4gan"):
            ceiling = mean["full"] - mean["supervised"]
            gap = f"{(mean[arm] - mean['supervised']) / ceiling:+.0%}" if ceiling > 0 else "n/a (full <= 1/8)"
        minutes = statistics.mean(r["train_s"] for r in rs) / 60
        std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-"
        lines.append(
            f"| {arm} | {len(rs)} (seeds {','.join(str(r['seed']) for r in rs)}) | {mean[arm]:.4f} | "
            f"{min(values):.4f}-{max(values):.4f} | {std} | {gap} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def run(options: argparse.Namespace) -> None:
    options.out.mkdir(parents=True, exist_ok=True)
    if not options.table_only:
        if options.root is None:
            raise SystemExit("error: --root: give the CamVid folder (SegNet layout: train/, trainannot/, val/ ...).")
        weights = encoder_weights(options.out)
        options.data_root = scaled_copy(Path(options.root), options.out, options.size)
        torch.set_float32_matmul_precision("high")
        for seed in options.seeds:
            for arm in options.arms:
                path = options.out / f"{arm}-seed{seed}.json"
                if path.is_file():
                    print(f"{path} exists: skipped")
                    continue
                result = run_arm(options, arm, seed, weights)
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(f"{arm} seed {seed}: val mIoU {result['val_mIoU']:.4f} in {result['train_s'] / 60:.1f} min")
    print("\n" + table(options.out))
