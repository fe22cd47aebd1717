#!/usr/bin/env bash
# The checks only a CUDA GPU can make, in one run (README, "On a GPU"). Each step has its own
# time limit, so one failure does not hide the rest; logs go to $OUT (default: gpu_out/).
#
# Usage, from the repository root, with the package importable (installed, or PYTHONPATH=src):
#     bash benchmarks/gpu_checks.sh [STEP ...]
# Steps (default: tests throughput predict):
#   tests       the `-m gpu` tests
#   throughput  training throughput at 512 px, batch 128, bf16 + channels_last: the real
#               pipeline vs the bare model (benchmarks/train_throughput.py)
#   predict     prediction time on a 512^2 x 300 CT, random-weight 512-px models
#               (benchmarks/predict_speed.py), at inference batch 16 and 64
#   demo        the demo at 16x the fast preset's budget (16 epochs x 2048 slices per phase)
#   demo-kits   the same with --preset fast,kits (phase 2 predicts tumor and cyst)
# Wheels of missing packages in .whl/ are installed first (a bare machine without pip access).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests throughput predict)

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "cpu cores: $(nproc)"
  $PY -c "import torch, lightning, segmentation_models_pytorch as smp, SimpleITK as s; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__, \
'smp', smp.__version__, 'SimpleITK', s.Version_VersionString())"
} 2>&1 | tee "$OUT/machine.txt"

demo() {  # demo NAME PRESET: 16x the fast budget on the GPU, Dice table and summary to $OUT
  timeout 240 $PY -m kidneyseg demo "/tmp/$1" --preset "$2" --set train.epochs=16 \
    --set data.samples_per_epoch=2048 --set data.num_workers=8 --set train.accelerator=gpu \
    2>&1 | tail -40 | tee "$OUT/$1.log"
  cp "/tmp/$1/eval/summary.json" "$OUT/$1_summary.json" 2>/dev/null || true
}

for step in "${STEPS[@]}"; do
  echo "== $step"
  case $step in
    tests)
      timeout 240 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_slow_and_gpu.py 2>&1 \
        | tee "$OUT/pytest_gpu.log" ;;
    throughput)
      timeout 240 $PY benchmarks/train_throughput.py --device cuda --image-size 512 \
        --batch-size 128 --precision bf16-mixed --channels-last --workers "$(($(nproc) - 2))" \
        --steps 20 2>&1 | tee "$OUT/throughput.log" ;;
    predict)
      for batch in 16 64; do
        timeout 180 $PY benchmarks/predict_speed.py --device cuda --shape 300x512x512 \
          --batch-size "$batch" --json 2>&1 | tee "$OUT/predict_b$batch.log"
      done ;;
    demo) demo demo_gpu fast ;;
    demo-kits) demo demo_gpu_kits fast,kits ;;
    *) echo "unknown step $step" ;;
  esac
done
