#!/bin/bash
# A maintainer's batch of GPU measurements, as prepared parts run in the order given within one run
# on a CUDA machine (e.g. `bash scripts/cuda_session.sh speed audit`), for machines rented for a few
# minutes at a time: every step writes its results under $OUT as soon as it ends, and a step that
# would not finish before DEADLINE_S seconds (from the start of this script; default 540) is skipped
# and listed as skipped, so a run cut short still returns everything it finished.
#
#   speed   the plain efficientnet_lite0 recipe, seed 42, with and without CUDA graphs (their effect
#           on the same machine); the reference recipe; `bench` on CUDA for both models
#   seeds   the plain recipe's seeds 42, 42 again (same seed twice: the GPU's spread), 43 and 44,
#           paired by `compare`
#   robust  the robust recipes trained (seed_cnn_robust, efficientnet_lite0_robust,
#           efficientnet_lite0_robust_256 for its 20 epochs and for 30), scored clean, exported for
#           the shift suite on the CPU; needs the kornia wheel
#   audit   label audit with 10-epoch fold models, then the ablation (seed 42 with and without the
#           Training suspects), paired by `compare`
#   sync    the batched augmentation on the device: no host synchronisation (CUDA sync debug mode)
#           and its throughput against the per-image version (scripts/cuda_augment_check.py), alone
#   profile where the default's and the reference's training step spends its time
#           (scripts/cuda_profile_step.py)
#   profile-compiled  the reference's step through torch.compile instead of a CUDA graph: its speed once
#           compiled, and the warm-up epoch that compiles it
#   augment the sync and profile parts; then
#           the default recipe efficientnet_lite0_robust at seeds 42 and 43 (its speed with the
#           augmentation, and two seeds' spread), seed_cnn_robust and efficientnet_lite0_robust_256
#           (20 epochs) timed; needs the kornia wheel
#   top     the steps in scripts/top_plan.tsv: the committed default's recipe (efficientnet_lite0_robust_256)
#           at seeds 42, 43 and 44, their ensemble and seed 42 with flip TTA; then efficientnet_lite1_robust,
#           the default with a weight average (efficientnet_lite0_robust_256_ema), efficientnet_lite2_robust
#           and ensembles of the backbones as far as the deadline allows; all on the committed default's
#           validation carve (scripts/default_carve.csv), exported unscored, each ensemble step's log
#           holding its and its members' validation scores; needs the kornia wheel and the Lite weights
#           (scripts/gpu_weights.py .gpu/stubs 0 1 2: 25 MB in float16 against 60 MB of wheels).
#           scripts/after_top.py then chooses on a CPU from the exports and scores the candidates on the
#           original files
#   audit-full  the label audit with the committed default's recipe (efficientnet_lite0_robust_256:
#           256 px, 20 epochs) as every fold model: Training and Testing pooled in 5 group-aware folds
#           (the 224-px, 10-epoch audit in docs/label_audit was trained on a CPU; about 7 min here, so a
#           call of its own); each fold's held-out probabilities come back with the list; needs the
#           kornia, cleanlab and termcolor wheels; then the fold models score their held-out Training
#           images at six sides (scripts/views_out_of_fold.py), to choose the side the recipe scores at
#   prefetch  the default's recipe (seed 42, 20 epochs) with its batches prepared in a worker process
#           (--host-prefetch process), timed against the host thread's 48.6 s; then the 224-px recipe's 10
#           epochs with the worker and with the thread; needs the kornia wheel
#   suite-install  the shift suite's wheels (scripts/gpu_suite_kit.sh wheels: .gpu-wheels/, carried alone,
#           since SimpleITK's is 53 MB), installed under runs/ on the machine, where the next call on the
#           same machine finds them
#   suite   the committed default's full shift suite (1,311 Testing images, 25 shifts x 3 severities) scored
#           on the GPU, its transforms on the machine's cores, from a call right after suite-install
#           (scripts/gpu_suite_kit.sh data: the original Testing files and a run folder listing them); then
#           the transforms alone, timed pair by pair (scripts/shift_transform_times.py), as the suite runs them
#           (each library held to one thread inside the suite's thread per core) and with the libraries' own pools
#
# What travels is limited to 64 MiB: the tracked tree is 25 MB (16 MB of it the committed
# checkpoints and 7.8 MB docs/, which no part needs: both go out of the tree for the call and back
# after), the data 34 MB, the Lite weight stand-ins 7-10 MB each; scripts/gpu_kit.sh packs .gpu/,
# checks the total and prints the commands that move the two folders out and back.
#
# Run from the project root with a compact copy of the data in .gpu/ (every image resized to 256 px
# and re-encoded as WebP, 34 MB packed; docs/reproduce.md). `make pipeline` needs none of this.
# Needs a python3 with torch and torchvision (a stock CUDA PyTorch image); wheels for what it
# lacks go in .gpu/wheels (installed without network; `machine.txt` lists what is missing): the
# audit part needs cleanlab and termcolor (`pip download --no-deps -d .gpu/wheels cleanlab==2.9.0 termcolor`).
# FAST=1 runs every step on a few images for one epoch (a smoke test of this script on any machine).
set -o pipefail
export PYTHONUNBUFFERED=1
[ $# -gt 0 ] || { echo "usage: cuda_session.sh speed|seeds|robust|audit|sync|profile|profile-compiled|augment|top|audit-full|prefetch|suite-install|suite ..." >&2; exit 2; }
DEADLINE_S=${DEADLINE_S:-540}
# Only a few files may come back from a rented machine: every result goes to a staging folder,
# packed into $OUT/results.tgz after each step (steps.tsv is also copied as it grows).
# the robust part's runs, NAME:RECIPE:SEED:SECONDS:EXTRA-PREPARE-FLAGS, each exported in half precision
ROBUST_RUNS=(seed-robust:seed_cnn_robust:42:70:
    effnet-robust-256-e20:efficientnet_lite0_robust_256:42:230:
    effnet-robust:efficientnet_lite0_robust:42:110:
    effnet-robust-256-e30:efficientnet_lite0_robust_256:42:320:--epochs=30)
# the top part's steps (runs, each exported, and ensembles), shared with scripts/after_top.py
TOP_PLAN=${TOP_PLAN:-scripts/top_plan.tsv} # another plan file: a part of it in a shorter call
# At most 8 files come back: results.tgz, steps.tsv and the half exports, so parts whose exports add up
# to more than 6 are refused before anything runs rather than lost at the end.
exports=0
for PART in "$@"; do
    case $PART in
    robust) exports=$((exports + ${#ROBUST_RUNS[@]})) ;;
    top) exports=$((exports + $(grep -c '^run'$'\t' "$TOP_PLAN"))) ;;
    esac
done
[ "$exports" -le 6 ] || { echo "these parts export $exports checkpoints, but only 6 come back beside results.tgz and steps.tsv: run robust and top in separate calls" >&2; exit 2; }
RESULTS=${OUT:-/tmp/cuda-out}
# a staging folder of this invocation's own: a fixed one carried an earlier invocation's steps and logs
# into this one's results.tgz and steps.tsv (two smoke runs on one machine, or two at once)
OUT=$(mktemp -d -t cuda-stage.XXXXXX) # under $TMPDIR, else /tmp
mkdir -p "$RESULTS"
pack() {
    tar -czf "$RESULTS/results-partial.tgz" -C "$OUT" . && mv "$RESULTS/results-partial.tgz" "$RESULTS/results.tgz"
    cp "$OUT/steps.tsv" "$RESULTS/" 2>/dev/null
}
PY=${PY:-python3}
DATA=${BRAIN_DATA_DIR:-$PWD/.gpu/brain-tumor-mri-dataset-256-webp}
# the data copy may travel as one .tgz: 7,023 small files take 68 MB of disk blocks, 34 MB packed
if [ ! -d "$DATA" ] && [ -f "$DATA.tgz" ]; then
    mkdir -p /tmp/gpu-data && tar -xzf "$DATA.tgz" -C /tmp/gpu-data && DATA=/tmp/gpu-data/$(basename "$DATA")
fi
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl || exit 3
    export PYTHONPATH=/tmp/site:$PWD
fi
# stand-ins for modules imported but never used here, whose wheels are too large to ship along
# (kornia imports kornia_rs for image files at import time)
# (scripts/gpu_kit.sh packs them as one .tgz)
if [ ! -d .gpu/stubs ] && [ -f .gpu/stubs.tgz ]; then
    mkdir -p /tmp/gpu-stubs && tar -xzf .gpu/stubs.tgz -C /tmp/gpu-stubs && export PYTHONPATH=${PYTHONPATH:-$PWD}:/tmp/gpu-stubs/stubs
fi
[ -d .gpu/stubs ] && export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD/.gpu/stubs
export BRAIN_DATA_DIR=$DATA BRAIN_CACHE_DIR=${BRAIN_CACHE_DIR:-/tmp/brain-cache}
RUNS=${RUNS:-/tmp/cuda-runs}
SUITE_SITE=${SUITE_SITE:-$PWD/runs/gpu-suite-site} # the suite's wheels, installed by one call for the next
SMOKE=() AUDIT_EPOCHS=10
PROFILE_BATCHES=40
if [ "${FAST:-0}" = 1 ]; then SMOKE=(--fast true --epochs 1) AUDIT_EPOCHS=1 PROFILE_BATCHES=3; fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
    for m in scipy pandas sklearn cleanlab cv2 pywt kornia torchio tensorboard; do
        $PY -c "import $m" 2>/dev/null && echo "ok $m" || echo "MISSING $m"
    done
    nproc
} | tee "$OUT/machine.txt"

# fits NAME SECONDS: true when a step expected to take SECONDS ends before the deadline
fits() {
    if [ $((SECONDS + $2)) -gt "$DEADLINE_S" ]; then
        printf '%s\tskipped\t(%d s left, needs about %d)\n' "$1" $((DEADLINE_S - SECONDS)) "$2" | tee -a "$OUT/steps.tsv"
        return 1
    fi
}

# step NAME CMD...: run a brainlib command, log without progress bars, record its wall time
step() {
    local name=$1
    shift
    local t0 rc
    t0=$(date +%s%N)
    $PY -m brainlib "$@" 2>&1 | tr '\r' '\n' | grep -v -E 'it/s|s/it' >"$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\trc=%s\t%d ms\n' "$name" "$rc" $((($(date +%s%N) - t0) / 1000000)) | tee -a "$OUT/steps.tsv"
    [ "$rc" = 0 ] || tail -5 "$OUT/$name.log"
    pack
    return "$rc"
}

# train_and_score NAME RECIPE SEED [evaluate flags...]: prepare (adding the flags in the array
# PREPARE_EXTRA, empty unless set), train, evaluate; keeps the run's small files. A run already
# scored earlier in the same invocation (by another part) is not trained again.
PREPARE_EXTRA=()
# on_default_carve [FLAGS...]: PREPARE_EXTRA for runs on the committed default's own 575 validation images
# (scripts/default_carve.csv; a smoke run, FAST, draws its carve from its few images), FLAGS added
on_default_carve() {
    PREPARE_EXTRA=(--split-seed 42 "$@")
    [ "${FAST:-0}" = 1 ] || PREPARE_EXTRA+=(--carve-file scripts/default_carve.csv)
}
train_and_score() {
    local name=$1 recipe=$2 seed=$3
    shift 3
    local run=$RUNS/$name
    [ -f "$run/metrics.json" ] && return 0
    fits "$name" "${NEED:-75}" || return 1
    step "$name-prepare" prepare --run-dir "$run" --recipe "$recipe" --seed "$seed" "${PREPARE_EXTRA[@]}" "${SMOKE[@]}" &&
        step "$name-train" train --run-dir "$run" &&
        step "$name-evaluate" evaluate --run-dir "$run" "$@"
    mkdir -p "$OUT/$name"
    cp "$run"/{config.json,history.csv,train_summary.json,metrics.json,predictions.csv} "$OUT/$name/" 2>/dev/null
    pack
}

# train_and_export NAME RECIPE SEED: prepare (adding PREPARE_EXTRA), train and export the best checkpoint
# (calibrated by `train` on its validation carve) in half precision beside results.tgz, with the run's small
# files; not scored here: the exports are scored on the original files on a CPU.
best() { echo "$RUNS/$1/checkpoints/best.pt"; } # NAME: the run's best checkpoint
train_and_export() {
    local name=$1 run=$RUNS/$1
    fits "$name" "${NEED:-75}" || return 1
    step "$name-prepare" prepare --run-dir "$run" --recipe "$2" --seed "$3" "${PREPARE_EXTRA[@]}" "${SMOKE[@]}" &&
        step "$name-train" train --run-dir "$run" &&
        step "$name-export" export "$(best "$name")" "$RESULTS/$name.pt" --half
    local rc=$?
    mkdir -p "$OUT/$name"
    cp "$run"/{config.json,history.csv,train_summary.json} "$OUT/$name/" 2>/dev/null
    pack
    return $rc
}

# the batched augmentation on the device: no host synchronisation, and its throughput against the per-image code
augment_check() {
    fits augment-check 60 || return 1
    $PY scripts/cuda_augment_check.py --out "$OUT/augment-check.json" >"$OUT/augment-check.log" 2>&1
    printf 'augment-check\trc=%s\n' $? | tee -a "$OUT/steps.tsv"
    pack
}

# where a training step's time goes (torch.profiler): the default's recipe, then the reference's
profile_steps() {
    for recipe in efficientnet_lite0_robust_256 reference; do
        fits "profile-$recipe" 60 && {
            $PY scripts/cuda_profile_step.py --recipe "$recipe" --batches "$PROFILE_BATCHES" --out "$OUT/profile-$recipe.json" >"$OUT/profile-$recipe.log" 2>&1
            printf 'profile-%s\trc=%s\n' "$recipe" $? | tee -a "$OUT/steps.tsv"
            pack
        }
    done
}

for PART in "$@"; do
    case $PART in
    speed)
        train_and_score effnet-s42 efficientnet_lite0 42 --shift-severities ""
        PREPARE_EXTRA=(--cuda-graphs false)
        train_and_score effnet-s42-nographs efficientnet_lite0 42 --shift-severities ""
        PREPARE_EXTRA=()
        NEED=45 train_and_score reference reference 42 --shift-severities ""
        fits bench-effnet 50 && step bench-effnet bench --run-dir "$RUNS/effnet-s42" --steps 20 --out "$OUT/bench-effnet.json"
        fits bench-reference 40 && step bench-reference bench --run-dir "$RUNS/reference" --steps 20 --out "$OUT/bench-reference.json"
        ;;
    seeds)
        for run in effnet-s42:42 effnet-s42-again:42 effnet-s43:43 effnet-s44:44; do
            train_and_score "${run%:*}" efficientnet_lite0 "${run#*:}" --shift-severities ""
        done
        step compare-seeds compare "$RUNS"/effnet-s4*
        ;;
    robust)
        # The acquisition augmentation on the GPU, checked on one batch before any training; the
        # shift suite itself runs on the CPU afterwards (TorchIO needs SimpleITK, too large to ship along
        # with the code), from the half-precision exports this part returns beside results.tgz.
        $PY -c "import torch; from brainlib.augment import AcquisitionParams as P, augment_acquisition as a
p = P(p_resolution=1, p_jpeg=1, p_gamma=1, p_window=1, p_clahe=1, p_equalize=1, p_noise=1)
x = a(torch.randint(0, 256, (8, 1, 256, 256), dtype=torch.uint8, device='cuda'), p, torch.Generator().manual_seed(0))
print('acquisition augmentation on', x.device, x.dtype, tuple(x.shape), 'range', float(x.min()), float(x.max()))" 2>&1 | tail -3 | tee -a "$OUT/machine.txt"
        for run in "${ROBUST_RUNS[@]}"; do
            IFS=: read -r name recipe seed need extra <<<"$run"
            IFS=, read -r -a PREPARE_EXTRA <<<"$extra"
            NEED=$need train_and_score "$name" "$recipe" "$seed" --shift-severities "" &&
                step "$name-export" export "$(best "$name")" "$RESULTS/$name.pt" --half
        done
        PREPARE_EXTRA=()
        ;;
    sync) augment_check ;;
    profile) profile_steps ;;
    profile-compiled)
        # the reference CNN's step is bound by its memory-bound kernels (BatchNorm, max-pool backward); whether
        # inductor's fusion of them reaches the 12,000 img/s aim, and what compiling costs
        fits profile-reference-compiled 150 && {
            $PY scripts/cuda_profile_step.py --recipe reference --compile --batches "$PROFILE_BATCHES" \
                --out "$OUT/profile-reference-compiled.json" >"$OUT/profile-reference-compiled.log" 2>&1
            printf 'profile-reference-compiled\trc=%s\n' $? | tee -a "$OUT/steps.tsv"
            pack
        }
        ;;
    augment)
        augment_check
        profile_steps
        for run in effnet-robust-s42:efficientnet_lite0_robust:42:80 effnet-robust-s43:efficientnet_lite0_robust:43:80 \
            seed-robust:seed_cnn_robust:42:45 effnet-robust-256-e20:efficientnet_lite0_robust_256:42:110; do
            IFS=: read -r name recipe seed need <<<"$run"
            NEED=$need train_and_score "$name" "$recipe" "$seed" --shift-severities ""
        done
        step compare-robust-seeds compare "$RUNS/effnet-robust-s42" "$RUNS/effnet-robust-s43"
        ;;
    top)
        # every run on one validation carve: the committed default's own 575 validation images
        # (scripts/default_carve.csv, kept by path on the compact copy), so seeds and backbones are compared
        # with the committed default itself on the same images and can be ensembled with it; a smoke run
        # (FAST) draws its carve from its few images. scripts/after_top.py makes the choice on a CPU from
        # what comes back and scores every candidate on the original files (the runs are not scored here:
        # 14 s each on the compact copy, which decides nothing). Each ensemble step's log holds its and
        # its members' validation accuracy and log-loss.
        on_default_carve
        mapfile -t plan < <(grep -E '^(run|ensemble)'$'\t' "$TOP_PLAN")
        incumbent=
        mkdir -p "$RUNS/ensembles"
        for line in "${plan[@]}"; do
            IFS=$'\t' read -r kind name a b need <<<"$line"
            if [ "$kind" = run ]; then # NAME RECIPE SEED SECONDS
                incumbent=${incumbent:-$name}
                NEED=$need train_and_export "$name" "$a" "$b"
                continue
            fi
            IFS=, read -r -a members <<<"$a" # ensemble: NAME MEMBERS VIEWS SECONDS
            checkpoints=()
            for m in "${members[@]}"; do checkpoints+=("$(best "$m")"); done
            if ! ls "${checkpoints[@]}" >/dev/null 2>&1; then
                printf 'ensemble-%s\tskipped\t(not every member trained: %s)\n' "$name" "$a" | tee -a "$OUT/steps.tsv"
                continue
            fi
            views=()
            [ "$b" = flip ] && views=(--flip)
            fits "ensemble-$name" "$need" && step "ensemble-$name" ensemble "${checkpoints[@]}" "${views[@]}" \
                --out "$RUNS/ensembles/$name.pt" --run-dir "$RUNS/$incumbent"
        done
        PREPARE_EXTRA=()
        ;;
    audit-full)
        fits audit-full 450 && step audit-full audit-labels --run-dir "$RUNS/label-audit-256" \
            --recipe efficientnet_lite0_robust_256 --seed 42 --folds 5 "${SMOKE[@]}"
        # the fold files too (≈80 KB a fold), so that the audit can be committed and read as the CPU one is
        (cd "$RUNS/label-audit-256/label_audit" 2>/dev/null && mkdir -p "$OUT/label-audit-256" &&
            cp ./*.{csv,json,png} "$OUT/label-audit-256/" 2>/dev/null
            for d in fold*/; do
                mkdir -p "$OUT/label-audit-256/$d" &&
                    cp "$d"/{held_out_paths.txt,held_out_probs.npy,history.csv,train_log.txt,train_summary.json} \
                        "$OUT/label-audit-256/$d" 2>/dev/null
            done)
        # the side to score the 256-px recipe at, chosen out of fold as the 224-px recipe's was (docs/results.md)
        if [ -f "$RUNS/label-audit-256/label_audit/folds.csv" ] && fits views-256 60; then
            t0=$(date +%s%N)
            $PY scripts/views_out_of_fold.py "$RUNS/label-audit-256" --sizes 256,288,304,320,336,352 >"$OUT/views-256.log" 2>&1
            printf 'views-256\trc=%s\t%d ms\n' $? $((($(date +%s%N) - t0) / 1000000)) | tee -a "$OUT/steps.tsv"
            pack
        fi
        ;;
    audit)
        train_and_score effnet-s42 efficientnet_lite0 42 --shift-severities ""
        fits audit 240 && step audit audit-labels --run-dir "$RUNS/label-audit" --recipe efficientnet_lite0 --seed 42 "${SMOKE[@]}" \
            --folds 5 --epochs "$AUDIT_EPOCHS" --test-checkpoint "$(best effnet-s42)"
        mkdir -p "$OUT/label-audit" && cp "$RUNS"/label-audit/label_audit/*.{csv,json,png} "$OUT/label-audit/" 2>/dev/null
        if [ -f "$RUNS/label-audit/label_audit/label_issues.csv" ]; then
            PREPARE_EXTRA=(--exclude-list "$RUNS/label-audit/label_audit/label_issues.csv")
            train_and_score effnet-s42-clean efficientnet_lite0 42 --shift-severities "" &&
                step compare-ablation compare "$RUNS/effnet-s42" "$RUNS/effnet-s42-clean"
            PREPARE_EXTRA=()
        fi
        ;;
    prefetch)
        # the default's recipe as the top part trains its seed 42 (the same carve), with each next batch
        # prepared in a worker process instead of a host thread: the same batches, so only the time can
        # move (the thread-prepared seed 42 trained in 48.6 s: docs/candidates/gpu-default-s42-320/)
        on_default_carve --host-prefetch process
        NEED=140 train_and_score prefetch-process efficientnet_lite0_robust_256 42 --shift-severities ""
        # the 224-px recipe's 10 epochs (its own aim: 15 s with graph capture), with the worker, then with
        # the thread on the same code, so the two differ in that alone
        NEED=90 train_and_score prefetch-process-224 efficientnet_lite0_robust 42 --shift-severities ""
        on_default_carve --host-prefetch thread
        NEED=90 train_and_score prefetch-thread-224 efficientnet_lite0_robust 42 --shift-severities ""
        PREPARE_EXTRA=()
        ;;
    suite-install)
        # runs/ is ignored by git, and a rented machine keeps ignored files between calls while it is held
        t0=$SECONDS
        rm -rf "$SUITE_SITE" && mkdir -p "$SUITE_SITE" &&
            $PY -m pip install -q --no-index --no-deps --no-compile --target "$SUITE_SITE" .gpu-wheels/*.whl &&
            PYTHONPATH=$SUITE_SITE:$PWD $PY -c "import SimpleITK, torchio, monai, pywt, nibabel, efficientnet_lite_pytorch
import brainlib.shifts, numpy as np
for s in brainlib.shifts.SHIFTS.values(): s(np.full((2, 64, 64), 100, np.uint8), 2)
print('every shift runs')" >"$OUT/suite-install.log" 2>&1
        printf 'suite-install\trc=%s\t%d s\n' $? $((SECONDS - t0)) | tee -a "$OUT/steps.tsv"
        pack
        ;;
    suite)
        if [ ! -d "$SUITE_SITE/torchio" ]; then
            printf 'suite\tskipped\t(no wheels in %s: run the suite-install part on this machine first)\n' "$SUITE_SITE" |
                tee -a "$OUT/steps.tsv"
            continue
        fi
        export PYTHONPATH=$SUITE_SITE:${PYTHONPATH:-$PWD}
        rm -rf /tmp/suite-data "$RUNS/suite" && mkdir -p /tmp/suite-data "$RUNS" && tar -xzf .gpu/Testing.tgz -C /tmp/suite-data &&
            cp -r .gpu/suite-run "$RUNS/suite"
        # all three severities unless FAST=1; the store of shift logits starts empty (a fresh cache folder)
        flags=(--shift-severities 1,2,3)
        [ "${FAST:-0}" = 1 ] && flags=(--shift-severities 2 --shift-sample 40)
        fits suite 300 && BRAIN_DATA_DIR=/tmp/suite-data BRAIN_CACHE_DIR=/tmp/suite-cache step suite evaluate \
            --checkpoint checkpoints/efficientnet_lite0_robust.pt --run-dir "$RUNS/suite" "${flags[@]}"
        mkdir -p "$OUT/suite" && cp "$RUNS"/suite/{metrics.json,predictions.csv} "$OUT/suite/" 2>/dev/null
        pack
        # the transforms alone: as the suite runs them (each library held to one thread inside the suite's thread
        # per core), then with each library's own pool of a thread per core (16 x 16 threads against 16 x 1)
        for inner in 1 0; do
            name=suite-transforms$([ "$inner" = 1 ] || echo "-inner$inner")
            fits "$name" 120 || continue
            t0=$(date +%s%N)
            BRAIN_DATA_DIR=/tmp/suite-data BRAIN_CACHE_DIR=/tmp/suite-cache $PY scripts/shift_transform_times.py \
                --run-dir "$RUNS/suite" "${flags[@]/--shift-/--}" --inner-threads "$inner" --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1
            printf '%s\trc=%s\t%d ms\n' "$name" $? $((($(date +%s%N) - t0) / 1000000)) | tee -a "$OUT/steps.tsv"
            pack
        done
        ;;
    *)
        echo "unknown part $PART (speed, seeds, robust, audit, sync, profile, profile-compiled, augment, top, audit-full, prefetch, suite-install or suite)" >&2
        exit 2
        ;;
    esac
done
pack
cat "$OUT/steps.tsv"
