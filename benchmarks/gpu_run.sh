#!/usr/bin/env bash
# The GPU run of issue 19, in one go: the GPU tests and the CAM benchmark, JSON into OUTDIR.
#
#   benchmarks/gpu_run.sh OUTDIR
#
# Runs from the repository root, in under 8 minutes on one GPU (each step has its own
# time limit, so a stuck step costs its limit, not the run):
#   1. what it needs: steadypool from this checkout (an editable install where pip can
#      build it, else PYTHONPATH=src), and torch, Pillow, numpy, cloudpickle, tqdm,
#      pytest, pytest-timeout, hypothesis, nvidia-ml-py: those already installed are
#      kept (a machine's CUDA build of torch is never replaced); missing ones are
#      installed with pip ('.[dev,cam,gpu]', which pins the CPU torch: only where no
#      torch is there at all);
#   2. pytest -m gpu                                        -> OUTDIR/gpu-tests.txt
#   3. benchmarks/cam.py --model wide, psa and irn, threads and processes, 96 images:
#        --devices cuda:0             (with the psa and irn patterns) -> OUTDIR/cam-1worker.json
#        --devices cuda:0,cuda:0      (two workers on one GPU)         -> OUTDIR/cam-2workers.json
#        --devices cuda:0, threads, --amp bf16 (psa and irn rows)      -> OUTDIR/cam-amp-bf16.json
#      each row with images/s, the workers' task time, bytes per image across the
#      process boundary, and the GPU's utilisation as NVML samples it.
# Without CUDA it says "no CUDA" and does a dry run of the same steps on the CPU (tiny
# network, 8 images, cpu devices), so the script is proven before a GPU is lent;
# GPU_RUN_DEVICE=cpu forces the dry run.
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
if [ -n "$missing" ]; then
    say "installing what is missing: $missing"
    if [[ " $missing " == *" torch "* ]]; then
        "$PY" -m pip install -q -e '.[dev,cam,gpu]' 2>&1 | tail -3
    else
        "$PY" -m pip install -q $missing 2>&1 | tail -3
    fi
fi
if "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    say "steadypool installed from this checkout (editable)"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    say "steadypool from this checkout through PYTHONPATH=src (no build backend here)"
fi
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
