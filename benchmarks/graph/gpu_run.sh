#!/usr/bin/env bash
# One device call: backend speeds on the GPU, then four Gowalla trainings side by side (each
# process is launch-bound, so they share the GPU well), each stopping at a chunk boundary after
# MINUTES. Run from the repository root with the data in $GLTA_SHARED_DATA.
# Usage: MINUTES=6 bash benchmarks/graph/gpu_run.sh OUTDIR
set -u
OUTDIR=${1:-/tmp/gpu_out}
MINUTES=${MINUTES:-6}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD/packages/glta-graph/src:$PWD/packages/glta-gllm/src PYTHONUNBUFFERED=1
B=benchmarks/graph/lightgcn_bench.py
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 120 python3 $B speed --device cuda --datasets ml-100k,ml-latest-small,gowalla \
  --backends csr,coo --steps 30 --warmup 5 --threads 4 --out "$OUTDIR/speed_gpu.json" \
  2>&1 | grep -v Warning
run() {  # name batch lr
  python3 $B train --dataset gowalla --device cuda --epochs 1000 --chunk 20 --threads 3 \
    --batch-size "$2" --lr "$3" --max-minutes "$MINUTES" --run-dir "/tmp/run-$1" \
    --log "$OUTDIR/gowalla_gpu_$1.jsonl" > "$OUTDIR/$1.out" 2>&1 &
}
run ref 2048 0.001
run b2048_lr3e-3 2048 0.003
run b4096_lr5e-3 4096 0.005
run b8192_lr1e-2 8192 0.01
wait
tail -n 3 "$OUTDIR"/*.out
nvidia-smi --query-gpu=memory.used --format=csv
