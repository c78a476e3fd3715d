#!/usr/bin/env bash
# Here, on a machine with PyPI, before scripts/gpu_full_scale.sh runs on a GPU server that has no
# network (the device tool's machines: Python 3.12, x86-64, torch and transformers installed):
#
#     bash scripts/device_wheels.sh            # fills the git-ignored folder .device/
#
#   .device/wheels/        the wheels of what such an image lacks (jiwer, soundfile, datasets and
#                          their needs), at the versions this checkout's .venv runs
#   .device/whisper-base/  Whisper base's tokenizer, generation config and spelling map, which
#                          scripts/standins.py --base builds the Whisper-large-v3 stand-in from
#                          (the embedded model's weights are too large to carry)
#
# About 6 MB in all. Carry it with the device tool's `carry: [".device"]`.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
DEST=.device
PACKAGES="jiwer rapidfuzz soundfile cffi pycparser datasets dill multiprocess"
mkdir -p "$DEST/wheels" "$DEST/whisper-base"
pins=()
for name in $PACKAGES; do
    pins+=("$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
echo "wheels: ${pins[*]}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST/wheels" "${pins[@]}"
base=$("$PY" -c "from speechprune.models import ensure_embedded; print(ensure_embedded('whisper-base'))")
for f in tokenizer.json tokenizer_config.json generation_config.json normalizer.json; do
    cp "$base/$f" "$DEST/whisper-base/$f"
done
du -sh "$DEST"
