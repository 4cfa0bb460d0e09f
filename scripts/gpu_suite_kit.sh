#!/bin/bash
# Packs what the shift suite needs on a rented CUDA machine, in two loads for two calls in a row on the same
# machine, since only 64 MiB travel a call and SimpleITK's wheel alone (TorchIO's motion artifact resamples
# through it) is 53 MB. Both folders are ignored by git, so each travels only in the call that carries it:
#
#   bash scripts/gpu_suite_kit.sh wheels   # .gpu-wheels/, for call 1 (carry .gpu-wheels, part suite-install):
#                                          # the suite's wheels the stock PyTorch image lacks, for its Python
#                                          # 3.12 (SimpleITK, TorchIO, NiBabel, MONAI, PyWavelets, Deprecated,
#                                          # efficientnet-lite-pytorch)
#   bash scripts/gpu_suite_kit.sh data     # .gpu/, for call 2 (carry .gpu, part suite): Testing's original
#                                          # files as one .tgz (25 MB) and a run folder whose manifest lists
#                                          # Testing alone
#
# Build both before call 1: the second call must come while the first one's machine is still held (a fresh
# machine has not installed the wheels, and the suite part then says so and stops). The suite scores the
# committed default checkpoint, which travels in the tracked tree (checkpoints/); docs/ is read by neither
# call and goes out of the tree for both (commands printed at the end), and for the wheels' call checkpoints/ too.
set -euo pipefail
WHAT=${1:?usage: gpu_suite_kit.sh wheels|data}
PY=${PY:-.venv/bin/python}
case $WHAT in wheels) KIT=.gpu-wheels ;; data) KIT=.gpu ;; *) KIT= ;; esac
[ -n "$KIT" ] || { echo "usage: gpu_suite_kit.sh wheels|data" >&2; exit 2; }
rm -rf "$KIT"
mkdir -p "$KIT"
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
case $WHAT in
wheels)
    # the GPU image runs Python 3.12: binary wheels for it, whatever Python packs them
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$KIT" \
        "simpleitk==$(version simpleitk)" "torchio==$(version torchio)" "nibabel==$(version nibabel)" \
        "monai==$(version monai)" "pywavelets==$(version pywavelets)" "deprecated==$(version deprecated)" \
        "efficientnet-lite-pytorch==$(version efficientnet-lite-pytorch)" 2>&1 | grep -v "is ignored: it is neither" || true
    aside="checkpoints docs"
    ;;
data)
    DATA=${BRAIN_DATA_DIR:?set BRAIN_DATA_DIR to the original dataset (Training/ and Testing/)}
    [ -d "$DATA/Testing" ] || { echo "$DATA has no Testing/ folder" >&2; exit 3; }
    tar -czf .gpu/Testing.tgz -C "$DATA" Testing
    # the run's settings and its manifest cut to Testing: the suite reads no Training image (the file-format
    # rule, fitted on Training's files, is left out of such a run's predictions)
    BRAIN_DATA_DIR=$DATA $PY -m brainlib prepare --run-dir .gpu/suite-run >/dev/null # data_dir stays unset: the env var names it there
    $PY -c "
import pandas as pd
m = pd.read_csv('.gpu/suite-run/manifest.csv')
m[m['split_on_disk'] == 'Testing'].to_csv('.gpu/suite-run/manifest.csv', index=False)
print('suite-run manifest:', int((m['split_on_disk'] == 'Testing').sum()), 'Testing images')"
    rm -f .gpu/suite-run/audit.json
    aside="docs"
    ;;
esac
. "$(dirname "$0")/kit_travels.sh"
# shellcheck disable=SC2086 # the folders to set aside, one word each
kit_travels "$KIT" $aside
