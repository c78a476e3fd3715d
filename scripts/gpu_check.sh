#!/usr/bin/env bash
# The GPU path in one go, on a machine with a CUDA GPU, from the repository root:
#
#     bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check
#
# It needs a CUDA build of torch and the dev extras (pytest, scikit-learn, psutil) already
# installed: the GPU machine may have no network. Steps, each with its own time limit (seconds,
# override with the variables below) so that one slow step cannot eat the others' time:
#
#   1. environment (nvidia-smi, torch, CUDA)               -> OUT/env.txt
#   2. pytest -m cuda: CUDA vs CPU on the same random       -> OUT/pytest_cuda.txt,
#      Whisper-base-sized model (summed inertia within 1%,     OUT/cuda_figures.json
#      both pruned models run), k-means CUDA vs CPU, and
#      the Whisper-large-v3-sized feed-forward stack at 10%
#   3. bench_kmeans.py --device cuda --large-only           -> OUT/bench_kmeans_large.txt
#      (k-means alone on the large-v3 stack, against its bare distance matmuls)
#   4. benchmarks/bench_compress.py --device cuda --large   -> OUT/bench_compress.txt
#   5. benchmarks/bench_kmeans.py --device cuda --quick     -> OUT/bench_kmeans.txt
#      (ours on the GPU against scikit-learn on the CPU)
#   6. the fast tests of the CLI, evaluation, k-means,      -> OUT/suite_cuda.txt
#      methods and Hub folders, where the default device
#      is now cuda (tests that need the embedded models
#      fail there when those are not installed)
#
# OUT/status.txt lists each step's exit status (124: it hit its time limit). The figures to
# copy into the README and the closing note are in cuda_figures.json and the bench files:
# the large-v3 time (target: under 10 s on one H100/H200) and k-means against its bare distance
# matmuls (target: within 3x). The limits add up to about 8.5 minutes.
set -u
OUT=${1:-gpu_check}
PY=${PYTHON:-python}
T_PYTEST=${T_PYTEST:-150}
T_KLARGE=${T_KLARGE:-90}
T_COMPRESS=${T_COMPRESS:-90}
T_KMEANS=${T_KMEANS:-90}
T_SUITE=${T_SUITE:-75}
KMEANS_ARGS=${KMEANS_ARGS:---quick}

mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SPEECHPRUNE_GPU_OUT="$OUT"
: > "$OUT/status.txt"

# shellcheck source=scripts/steps.sh
. "$(dirname "$0")/steps.sh"  # step NAME LIMIT LOGFILE COMMAND...

{
    nvidia-smi || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
} > "$OUT/env.txt" 2>&1
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch (see $OUT/env.txt); nothing measured" | tee -a "$OUT/status.txt"
    exit 3
fi

step "pytest -m cuda" "$T_PYTEST" pytest_cuda.txt "$PY" -m pytest tests/test_cuda.py -m cuda -v -rs -s -p no:cacheprovider
step "bench_kmeans --device cuda --large-only" "$T_KLARGE" bench_kmeans_large.txt \
    "$PY" benchmarks/bench_kmeans.py --device cuda --large-only
step "bench_compress --device cuda --large" "$T_COMPRESS" bench_compress.txt \
    "$PY" benchmarks/bench_compress.py --device cuda --large --repeats 3
# shellcheck disable=SC2086
step "bench_kmeans --device cuda" "$T_KMEANS" bench_kmeans.txt "$PY" benchmarks/bench_kmeans.py --device cuda $KMEANS_ARGS
step "fast tests, default device cuda" "$T_SUITE" suite_cuda.txt "$PY" -m pytest -q -rf -m "not slow" \
    -p no:cacheprovider tests/test_kmeans.py tests/test_cli.py tests/test_evaluate.py tests/test_methods.py tests/test_hub.py
cat "$OUT/status.txt"
