#!/usr/bin/env bash
# Issue 18's GPU measurements in one call on one H100/H200 with 16 cores, within BUDGET seconds (default 520, for a
# device call limited to 10 minutes); run on an H200 on 2026-11-30 with BUDGET=540 (the step's three rounds ended
# at 410 s; the data step, then given 90 s, printed nothing; it has 150 s of 520 now):
#   bash seg_gan/bench/gpu_session.sh [OUT]      (from the repository root; OUT defaults to $OUT, else bench_results/gpu-<date>)
# The step benchmark goes first and starts no run after its share of BUDGET (--time-limit; the variants take turns, so
# a call cut short after the first round has every variant); every step after the environment runs under `timeout -k`,
# and the benchmarks stop at SIGTERM with what finished, so the script ends inside BUDGET plus a few seconds whatever
# hangs. A variant that fails is listed under the table and the others go on. Every step writes its results into OUT
# as it finishes:
#   environment.txt      card, driver, CUDA, torch and Lightning versions, CPU count, date
#   frames.log           the drawing of the Cityscapes-size frames (its error, if it failed)
#   gpu/                 python -m seg_gan.bench gpu: limits.json (bf16 matmul and conv TFLOP/s, FLOPs per image),
#                        runs/*.json (one per run, as it ends), table.md (rewritten after each run), sync_audit.txt
#   gpu.log              its printed output
#   data.txt             python -m seg_gan.bench data: loader images/s with 4-16 workers against the GPU step's rate
#   fused_skip.txt       the fused optimizers' found_inf skip on CUDA (tests/test_speed.py, CUDA cases)
# Needs the project's dependencies (pip install -e ".[dev]"); nothing is downloaded. Overrides: BUDGET (520), REPEATS (3),
# STEPS (25), WARMUP (5), WORKERS (16), FRAMES (24), FRAME_SIZE ("1024 2048"), and EXTRA_GPU_ARGS / EXTRA_DATA_ARGS
# appended to the two benchmark commands (later options win; e.g. a CPU smoke run of this script:
#   FRAMES=2 FRAME_SIZE="128 256" EXTRA_GPU_ARGS="--device cpu --crop 64 64 --encoder resnet18 --steps 1 --warmup 1
#   --batch 1 --repeats 1 --workers 1 --loader-steps 2 --matmul-size 64 --conv-shape 1 8 16 16 --variants fp32
#   bf16+channels_last"
#   EXTRA_DATA_ARGS="--crop 64 64 --images 8 --batch 2 --workers 1" bash seg_gan/bench/gpu_session.sh /tmp/smoke).
set -uo pipefail
OUT=${1:-${OUT:-bench_results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}}
BUDGET=${BUDGET:-520} REPEATS=${REPEATS:-3} STEPS=${STEPS:-25} WARMUP=${WARMUP:-5} WORKERS=${WORKERS:-16}
FRAMES=${FRAMES:-24} FRAME_SIZE=${FRAME_SIZE:-1024 2048} EXTRA_GPU_ARGS=${EXTRA_GPU_ARGS:-} EXTRA_DATA_ARGS=${EXTRA_DATA_ARGS:-}
mkdir -p "$OUT"
started=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - started )) s] $*"; }
# seconds of BUDGET left, keeping $1 for the steps after; at least 1 (`timeout 0` would mean no limit)
left() { local s=$(( BUDGET - ($(date +%s) - started) - $1 )); echo $(( s > 0 ? s : 1 )); }

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  python -c "import torch, lightning, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'lightning', lightning.__version__, 'cpus', os.cpu_count())"
  nproc; free -g | head -2
} > "$OUT/environment.txt" 2>&1
elapsed "environment recorded"; cat "$OUT/environment.txt"

# 1. Cityscapes-size frames, drawn once, for the loader-fed variants and the data benchmark
FRAMES_DIR=$(mktemp -d)/frames || { echo "mktemp -d failed: no folder for the frames"; exit 1; }
# the values reach Python through its environment, never spliced into its source (a TMPDIR holding ' stays a path)
if FRAMES_DIR=$FRAMES_DIR FRAME_SIZE=$FRAME_SIZE FRAMES=$FRAMES timeout -k 5 120 python -c "
import os
from pathlib import Path
from seg_gan.data.synthetic import write_synthetic_cityscapes
size, count = tuple(int(v) for v in os.environ['FRAME_SIZE'].split()), int(os.environ['FRAMES'])
write_synthetic_cityscapes(Path(os.environ['FRAMES_DIR']), size, {'train': count, 'val': 1}, seed=0)
" > "$OUT/frames.log" 2>&1; then
  elapsed "drew $FRAMES frames of $FRAME_SIZE"
else
  elapsed "drawing the frames failed (status $?; 124: its 120 s ran out): $OUT/frames.log"
fi

# 2. the step: these variants (bf16 contiguous and cudnn.benchmark, measured before issue 18, are left out),
# the sync audit, then $REPEATS runs each, taking turns; limits, FLOPs, MFU; compile on/off/as before; loader-fed
variants=("fp32" "bf16+channels_last" "bf16+channels_last+compile" "bf16+channels_last, supervised (no D)"
          "bf16+channels_last+compile, supervised (no D)" "bf16+channels_last, Cityscapes loader"
          "bf16+channels_last, host-checked skips" "bf16+channels_last, unfused optimizers, host-checked skips"
          "bf16+channels_last+compile as before (nn.Module.compile)" "bf16+channels_last+compile, Cityscapes loader")
# no run starts in the last 270 s (a compiled variant's first run can take minutes); SIGTERM at 180 s before the end
timeout -k 10 "$(left 180)" python -m seg_gan.bench gpu --out "$OUT/gpu" --root "$FRAMES_DIR" --workers "$WORKERS" \
    --repeats "$REPEATS" --steps "$STEPS" --warmup "$WARMUP" --sync-audit --time-limit "$(left 270)" \
    --variants "${variants[@]}" $EXTRA_GPU_ARGS 2>&1 \
    | tee "$OUT/gpu.log" | grep -E "images/s|TFLOP|GFLOP|^\||^- |synchronisations|^ +[0-9]+ "
elapsed "gpu benchmark done"

# 3. the loader: how many workers reach the step's rate (the data benchmark's default: the fastest H200 step),
# each pass printed as it ends; 2 passes of 4-16 workers take about a minute (the H200 call of 2026-11-30 gave
# it 90 s for 1-16 workers, and it printed nothing: it printed only at its end then)
timeout -k 5 "$(left 30)" python -m seg_gan.bench data --root "$FRAMES_DIR" --workers 16 8 4 12 --images 256 --repeats 2 \
    --frame-size $FRAME_SIZE $EXTRA_DATA_ARGS > "$OUT/data.txt" 2>&1
elapsed "data benchmark done"; tail -9 "$OUT/data.txt"

# 4. fused SGD/Adam/AdamW skipping a step through found_inf on CUDA, first and later steps (seconds)
timeout -k 5 "$(left 0)" python -m pytest -q -p no:cacheprovider tests/test_speed.py -k found_inf > "$OUT/fused_skip.txt" 2>&1
elapsed "fused skip check: $(tail -1 "$OUT/fused_skip.txt")"
rm -rf "$(dirname "$FRAMES_DIR")"
