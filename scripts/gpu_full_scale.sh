#!/usr/bin/env bash
# Issue 19's GPU measurements in one call, on a machine with a CUDA GPU and no network, from the
# repository root:
#
#     bash scripts/device_wheels.sh           # here, once: the git-ignored .device/ to carry
#     bash scripts/gpu_full_scale.sh OUT      # there (the device tool: carry [".device"], OUT=$OUT)
#
# Steps, each with its own share of the time (BUDGET seconds in all, default 540):
#
#   1. what the image lacks (jiwer, soundfile, datasets), from .device/wheels, into $WORK/site
#   2. the real-size stand-ins (scripts/standins.py: HuBERT-large, Whisper-large-v3 with the
#      tokenizer of .device/whisper-base, LibriSpeech) in $WORK/standins, written once
#   3. benchmarks/bench_full_scale.py on DEVICES (default cuda-15GB,cuda: the T4 memory cap first)
#      for METHODS (default recommended,paper,magnitude), into $WORK/full_scale.json, which starts
#      as a copy of FROM (default results/benchmarks/full_scale.json, the CPU rows; empty: no rows)
#   4. OUT/full_scale.json (copy it over results/benchmarks/full_scale.json), OUT/page.md (the
#      table of book/full_scale.md), OUT/status.txt and each step's log
#
# $WORK (default /tmp/gpu19) outlives the call on a warm machine: a second call skips the stand-ins
# and the cases already measured, so a run cut short by BUDGET goes on where it stopped.
# STANDINS_ARGS (e.g. --tiny) and DEVICES=cpu give a dry run on any machine.
set -u
OUT=${1:-gpu_full_scale}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu19}
BUDGET=${BUDGET:-540}
DEVICES=${DEVICES:-cuda-15GB,cuda}
METHODS=${METHODS:-recommended,paper,magnitude}
MODELS=${MODELS:-whisper-large-v3,hubert-large}
STANDINS_ARGS=${STANDINS_ARGS:-}
FROM=${FROM-results/benchmarks/full_scale.json}
T_STANDINS=${T_STANDINS:-240}
START=$SECONDS

mkdir -p "$OUT" "$WORK"
: > "$OUT/status.txt"
# shellcheck source=scripts/steps.sh
. "$(dirname "$0")/steps.sh"  # step NAME LIMIT LOGFILE COMMAND...
left() { echo $((BUDGET - (SECONDS - START) - 15)); }

{
    nvidia-smi || true
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1

# 1. packages: only when something is missing, and only from the carried wheels
if ! "$PY" -c "import jiwer, soundfile, datasets" 2>/dev/null; then
    if ls .device/wheels/*.whl > /dev/null 2>&1; then
        step "wheels" 60 wheels.txt "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$WORK/site" .device/wheels/*.whl
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "jiwer, soundfile or datasets is missing and .device/wheels is empty: run scripts/device_wheels.sh here first" \
            | tee -a "$OUT/status.txt"
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 2. stand-ins, once
if [ ! -f "$WORK/standins/standins.json" ]; then
    base=()
    [ -f .device/whisper-base/tokenizer.json ] && base=(--base .device/whisper-base)
    # shellcheck disable=SC2086
    step "stand-ins" "$T_STANDINS" standins.txt "$PY" scripts/standins.py "$WORK/standins" "${base[@]}" $STANDINS_ARGS \
        || { rm -rf "$WORK/standins"; exit 1; }  # never a half-written cache
fi

# 3. the benchmark, resumable
[ -f "$WORK/full_scale.json" ] || [ -z "$FROM" ] || cp "$FROM" "$WORK/full_scale.json"
step "bench_full_scale --devices $DEVICES" "$(left)" bench.txt "$PY" benchmarks/bench_full_scale.py \
    --standins "$WORK/standins" --out "$WORK/full_scale.json" --models "$MODELS" --methods "$METHODS" \
    --devices "$DEVICES"

# 4. what comes back
cp "$WORK/full_scale.json" "$OUT/full_scale.json"
"$PY" benchmarks/bench_full_scale.py --out "$WORK/full_scale.json" --page > "$OUT/page.md" 2>&1
cat "$OUT/status.txt"
