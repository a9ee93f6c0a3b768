#!/usr/bin/env bash
# The semi-supervised study's whole grid in one call, for a machine with a GPU (or many cores):
#   bash seg_gan/bench/semi_grid.sh /path/to/CamVid 1-16 [parallel runs, default 10]
# Every (arm, seed) run is its own process writing its JSON into seg_gan/bench/results/semi/ as it finishes
# (runs whose file exists are skipped), so a call cut short keeps what finished. The positive control's pairs
# (supervised and cutmix, every seed) run first: the control is read before any other arm, and if it shows no
# gain the other arms' runs would be spent on a protocol in doubt. Then the other arms, seed-major (whole
# pairs first). SEG_GAN_SEMI_DRY_RUN=1 prints the order ("arm seed" per line) and exits.
# 8 arms x 5 seeds + the full-label ceiling x 3 = 43 runs of 2000 batches (SEG_GAN_SEMI_BATCHES; the length at
# which the control gains on val, bench README "Run length"). On one H200 (2026-11-30), 6 runs of 1000 batches at
# once trained 84-182 s each, so the grid at 2000 takes about 40 minutes of GPU time: five or more device calls.
# A cutmix run (not timed on a GPU yet) is estimated at roughly 260-420 s of training at 6 at once (bench README
# "What a run costs on a GPU"): a call cut at its limit may need 8 minutes or more to finish one.
# SEG_GAN_SEMI_DEADLINE (seconds since the epoch, when the call or allocation ends): no run starts whose arm
# trained longer than the time left on this device before (its result files; semi.py --deadline).
set -euo pipefail -f  # -f: arm names are never file patterns
root=${1:?usage: semi_grid.sh /path/to/CamVid LABELS [PARALLEL]}
labels=${2:?give the labeled subset: 1-32, 1-16 or 1-8}
parallel=${3:-10}
work=${SEG_GAN_SEMI_WORK:-bench_results/semi}             # scaled data, weights, logs
results=${SEG_GAN_SEMI_RESULTS:-seg_gan/bench/results/semi} # the JSON files (commit them)
arms=$(echo ${SEG_GAN_SEMI_ARMS:-supervised cutmix confidence error hung-noise hung s4gan adversarial})  # 1 space apart
seeds=${SEG_GAN_SEMI_SEEDS:-0 1 2 3 4}
batches=${SEG_GAN_SEMI_BATCHES:-2000}
case ${SEG_GAN_SEMI_DEADLINE:-} in ""|[1-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;; *)  # not a duration
  echo "error: SEG_GAN_SEMI_DEADLINE=$SEG_GAN_SEMI_DEADLINE: expected whole seconds since the epoch, such as" \
    "\$(( \$(date +%s) + 3600 )) for an hour from now" >&2; exit 2 ;;
esac
control=""  # the control's pairs, where both arms are in the grid
case " $arms " in *" supervised "*) case " $arms " in *" cutmix "*) control="supervised cutmix" ;; esac ;; esac
plan() {
  for seed in $seeds; do for arm in $control; do echo "$arm $seed"; done; done
  for seed in $seeds; do
    for arm in $arms; do case " $control " in *" $arm "*) ;; *) echo "$arm $seed" ;; esac; done
    if [ "$seed" -lt 3 ]; then echo "full $seed"; fi
  done
}
if [ "${SEG_GAN_SEMI_DRY_RUN:-0}" = 1 ]; then plan; exit 0; fi
mkdir -p -- "$work/logs"
# prepare once (scaled CamVid copy, converted encoder weights) before the runs start side by side
python -m seg_gan.bench semi --root="$root" --labels="$labels" --arms supervised --seeds 0 --batches 1 \
  --work="$work" --results="$work/prepare" > "$work/logs/prepare.log" 2>&1
# each run reads the paths from its environment (never spliced into its script) and gets them as --option=value:
# spaces, quotes, $, backticks, newlines or a leading dash reach Python as they are
export root labels batches work results
plan | xargs -P "$parallel" -L 1 bash -c 'python -m seg_gan.bench semi --root="$root" --labels="$labels" \
      --arms "$0" --seeds "$1" --batches="$batches" --work="$work" --results="$results" \
      ${SEG_GAN_SEMI_DEADLINE:+--deadline "$SEG_GAN_SEMI_DEADLINE"} > "$work/logs/$0-$1.log" 2>&1 \
      || echo "failed: $0 seed $1"
    grep -h -e "not started (--deadline)" -- "$work/logs/$0-$1.log" || :'  # as each run the deadline kept out ends
python -m seg_gan.bench semi --table-only --results="$results"
