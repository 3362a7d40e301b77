#!/usr/bin/env bash
# Everything this project checks on a lent GPU, in one go (the device lease is short and each start costs minutes):
#   bash bench/gpu_run.sh DATA_DIR OUT_DIR [GAN_MINUTES]
# 1. bench/cuda_check.py: the app's CUDA paths (bf16 and fp16+GradScaler GAN at 128 px, resume, CPU portability,
#    classifier AMP training and device/CPU scoring agreement);
# 2. bench/gan.py with the CUDA preset at 64 px for GAN_MINUTES, scoring every checkpoint (the goals table is at
#    64 px, so the numbers compare directly with the CPU runs in BENCHMARKS.md);
# 3. bench/train.py --full on the GPU: the default classifier recipe, its time and test scores.
# Each step has its own time limit and the script goes on after a failure, so one broken step costs no others.
set -u
DATA=${1:?data folder}
OUT=${2:?output folder}
GAN_MINUTES=${3:-4.5}
export PYTHONUNBUFFERED=1 WBC_HOME=${WBC_HOME:-/tmp/wbc_gpu} WBC_PBC128=$DATA
mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout 240 python3 bench/cuda_check.py --data "$DATA" --device cuda --out "$OUT/cuda_check.json"
echo "cuda_check rc=$?"
timeout $(python3 -c "print(int($GAN_MINUTES*60 + 240))") python3 bench/gan.py --device cuda --preset cuda --size 64 \
  --threads 8 --budget-minutes "$GAN_MINUTES" --score-checkpoints --checkpoint-every 1000 --tag cuda_64px
echo "gan bench rc=$?"
cp bench/results/gan_cuda_64px.json bench/results/gan_cuda_64px.md "$OUT/" 2>/dev/null
grid=$(ls -t "$WBC_HOME"/cache/bench/run_cuda_64px/samples/*.png 2>/dev/null | head -1)
[ -n "$grid" ] && cp "$grid" "$OUT/gan_cuda_64px_last_grid.png"
timeout 150 python3 bench/train.py --data "$DATA" --size 64 --full --skip-quick --set device=cuda --out "$OUT"
echo "train full rc=$?"
