#!/usr/bin/env bash
# The GPU run of issue 19, in one go: the GPU tests and the CAM benchmark, JSON into OUTDIR.
#
#   benchmarks/gpu_run.sh OUTDIR
#
# Runs from the repository root, in under 8 minutes on one GPU (each step has its own
# time limit, so a stuck step costs its limit, not the run):
#   1. what it needs: steadypool from this checkout (PYTHONPATH=src), and what the
#      extras dev, cam and gpu name (torch, Pillow, pytest, pytest-timeout, hypothesis,
#      nvidia-ml-py; numpy, cloudpickle, tqdm): those already there are kept (the
#      machine's CUDA build of torch is never replaced by the pinned CPU one), missing
#      ones are installed with pip, unpinned (a CUDA torch where none is there);
#   2. pytest -m gpu                                        -> OUTDIR/gpu-tests.txt
#   3. benchmarks/cam.py --model wide, psa and irn, threads and processes, 96 images:
#        --devices cuda:0             (with the psa and irn patterns) -> OUTDIR/cam-1worker.json
#          (the psa pattern needs the bug report: shared/seed beside the checkout, or
#          STEADYPOOL_SEED_DIR; without it that row is left out, said so)
#        --devices cuda:0,cuda:0      (two workers on one GPU)         -> OUTDIR/cam-2workers.json
#        --devices cuda:0, threads, --amp bf16 (psa and irn rows)      -> OUTDIR/cam-amp-bf16.json
#      each row with images/s, the workers' task time, bytes per image across the
#      process boundary, and the GPU's utilisation as NVML samples it.
# Without CUDA it says "no CUDA" and does a dry run of the same steps on the CPU (tiny
# network, 8 images, cpu devices), so the script is proven before a GPU is lent;
# GPU_RUN_DEVICE=cpu forces the dry run; GPU_RUN_NO_INSTALL=1 installs nothing (a shared
# environment: missing packages are then only named).
set -u
OUT=${1:?usage: benchmarks/gpu_run.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)
say() { echo "[gpu_run $(($(date +%s) - start))s] $*" | tee -a "$OUT/gpu_run.log"; }

# --- 1. what it needs ----------------------------------------------------------------------
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"torch": "torch", "PIL": "pillow", "numpy": "numpy", "cloudpickle": "cloudpickle",
        "tqdm": "tqdm", "pytest": "pytest", "pytest_timeout": "pytest-timeout",
        "hypothesis": "hypothesis", "pynvml": "nvidia-ml-py"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ] && [ -n "${GPU_RUN_NO_INSTALL:-}" ]; then
    say "missing, not installed (GPU_RUN_NO_INSTALL): $missing"
elif [ -n "$missing" ]; then
    say "installing what is missing: $missing"
    "$PY" -m pip install -q $missing 2>&1 | tail -3
fi
# steadypool itself from this checkout, never installed: an editable install would
# re-point an environment others may share, and needs hatchling (not on the GPU image)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import steadypool, torch, PIL; print('steadypool', steadypool.__file__, 'torch', torch.__version__)" \
    | tee -a "$OUT/gpu_run.log" || { say "cannot import steadypool, torch and Pillow: stop"; exit 2; }

if [ "${GPU_RUN_DEVICE:-}" != cpu ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    ONE=cuda:0 TWO=cuda:0,cuda:0 MODEL=wide IMAGES=96 TIMEOUT=150
    "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu_run.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$OUT/gpu_run.log" 2>&1
else
    ONE=cpu TWO=cpu,cpu MODEL=tiny IMAGES=8 TIMEOUT=300
    say "no CUDA: a dry run of the same steps on the CPU (tiny network, $IMAGES images, cpu devices)"
fi

# --- 2. the GPU tests ------------------------------------------------------------------------
say "pytest -m gpu"
timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt" | tail -3
say "pytest -m gpu: exit ${PIPESTATUS[0]}"

# --- 3. the CAM benchmark --------------------------------------------------------------------
bench() {  # NAME DEVICES EXTRA...
    local name=$1 devices=$2
    shift 2
    say "cam.py $name: --devices $devices $*"
    timeout "$TIMEOUT" "$PY" benchmarks/cam.py --model "$MODEL" --images "$IMAGES" \
        --devices "$devices" --backends threads,processes --json "$OUT/cam-$name.json" "$@" 2>&1 \
        | grep -v -e Warning -e warn | tee -a "$OUT/gpu_run.log" | tail -12
    say "cam.py $name: exit ${PIPESTATUS[0]}"
}
bench 1worker "$ONE"
bench 2workers "$TWO" --no-patterns
bench amp-bf16 "$ONE" --no-patterns --backends threads --amp bf16
say "done: $(ls "$OUT" | tr '\n' ' ')"
