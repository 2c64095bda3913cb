#!/usr/bin/env bash
# One device call (about 8 minutes on an H100/H200) that exercises every CUDA path:
#   1. glta-gllm kernels on CUDA: timings against the naive path (compare.py, quiet GPU) and
#      peak memory in fresh processes (memory.py); section "triton" (not in the default
#      run): the Triton backend's tests compiled on the GPU and its timings and memory;
#   2. then, side by side: six Gowalla LightGCN recipes (GRID=warmup|hardneg|hardneg_l2; epoch curves to
#      pick the recipe for the 2-hour CPU target), the CUDA tests (glta-gllm, glta-graph),
#      and `glta pipeline` on the GPU with a randomly initialised SmolLM2-shaped LLM (the real
#      weights are too large to carry; quality numbers are not the point).
# The device machine runs its own python3 (torch, transformers, peft, typer preinstalled);
# what it lacks travels in .gpu/ (git-ignored), made on this machine with:
#   mkdir -p .gpu/whl .gpu/data && cp -r ../shared/data/gowalla .gpu/data/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .gpu/whl datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 recbole==1.2.1
#   cp ~/.cache/glta/models/SmolLM2-135M-Instruct.Q4_1/*.json .gpu/smolcfg/  (config+tokenizer)
# Usage (repository root): OUT=/tmp/out bash benchmarks/gpu_check.sh [SECTION ...]
# SECTIONs: gllm triton auto gowalla tests pipeline (default: all but triton; PIPELINE_ARGS adds pipeline options;
# GRID picks the Gowalla recipes, LOGDIR where their logs go)
set -u
SECTIONS=" ${*:-gllm gowalla tests pipeline} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }
OUT=${OUT:-/tmp/gpu_out}
MINUTES=${MINUTES:-4}
G=$PWD/.gpu
mkdir -p "$OUT" /tmp/o /tmp/o/gowalla
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  "$G"/whl/*.whl || exit 1
SRC=$PWD/packages
export PYTHONPATH=/tmp/site:$SRC/glta-gllm/src:$SRC/glta-graph/src:$SRC/glta-align/src:$SRC/glta-cli/src
export PYTHONUNBUFFERED=1 GLTA_SHARED_DATA=$G/data GLTA_CACHE_DIR=/tmp/glta-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

# ---- 1. GLLM kernels, quiet GPU
if want gllm; then
C="timeout 30 python3 benchmarks/gllm/compare.py --device cuda --repeats ${REPEATS:-5}"
{
  $C lce 512 576 100000
  $C lce 512 576 100000 --dtype bfloat16
  $C lce 256 4096 200000
  $C lce 256 4096 200000 --dtype bfloat16
  $C lce 1024 64 1000000
  $C lce 4096 576 100000 --dtype bfloat16
  $C topk 4096 64 1000000
  $C head 256 4096 64 1000000
} > "$OUT/gllm_compare_cuda.jsonl" 2> /tmp/o/gllm_compare_cuda.err
M="timeout 45 python3 benchmarks/gllm/memory.py --device cuda"
{
  $M lce 512 576 100000 --variants naive,glta
  $M lce 512 576 100000 --variants naive,glta --dtype bfloat16
  $M topk 4096 64 1000000
  $M head 256 4096 64 10000000 --variants matching
} > "$OUT/gllm_memory_cuda.jsonl" 2> /tmp/o/gllm_memory_cuda.err
cat "$OUT"/gllm_*_cuda.jsonl | cut -c1-200
fi

# ---- 1b. the Triton backend of linear_cross_entropy (about 2 minutes): its tests compiled
# on the GPU, then timings and memory against the naive path and the torch plan
if want triton; then
timeout 150 python3 -m pytest -q -p no:cacheprovider packages/glta-gllm/tests/test_triton.py \
  2>&1 | tail -n 15 > "$OUT/pytest_triton.txt"; cat "$OUT/pytest_triton.txt"
C="timeout 60 python3 benchmarks/gllm/compare.py --device cuda --repeats ${REPEATS:-5} --only glta,glta_triton,torch_auto"
{
  $C lce 512 576 100000
  $C lce 512 576 100000 --dtype bfloat16
  $C lce 256 4096 200000
  $C lce 256 4096 200000 --dtype bfloat16
  $C lce 4096 576 100000 --dtype bfloat16
  $C lce 1024 64 1000000
} > "$OUT/triton_compare_cuda.jsonl" 2> /tmp/o/triton_compare_cuda.err
M="timeout 60 python3 benchmarks/gllm/memory.py --device cuda"
{
  $M lce 512 576 100000 --variants naive,glta,glta_triton --dtype bfloat16
  $M lce 256 4096 200000 --variants naive,glta,glta_triton
} > "$OUT/triton_memory_cuda.jsonl" 2> /tmp/o/triton_memory_cuda.err
cat "$OUT"/triton_*_cuda.jsonl | cut -c1-200; tail -n 5 /tmp/o/triton_*.err
fi

# ---- 1c. what backend="auto" picks (Triton for bf16 on CUDA): steady-state memory (one
# full-size step first, so Triton's one-time autotuning buffers are left out), timings of
# auto (glta) against both backends, and the CUDA + Triton tests under the new default
if want auto; then
(timeout 150 python3 -m pytest -q -p no:cacheprovider packages/glta-gllm/tests/test_cuda.py \
  packages/glta-gllm/tests/test_triton.py 2>&1 | tail -n 15 > "$OUT/pytest_auto.txt") &
M="timeout 60 python3 benchmarks/gllm/memory.py --device cuda --warmup full"
{
  $M lce 512 576 100000 --variants naive,glta,glta_torch,glta_triton --dtype bfloat16
  $M lce 4096 576 100000 --variants naive,glta,glta_torch,glta_triton --dtype bfloat16
} > "$OUT/auto_memory_cuda.jsonl" 2> /tmp/o/auto_memory_cuda.err
wait
C="timeout 60 python3 benchmarks/gllm/compare.py --device cuda --repeats ${REPEATS:-5} --only glta,glta_torch,glta_triton"
{
  $C lce 512 576 100000 --dtype bfloat16
  $C lce 4096 576 100000 --dtype bfloat16
} > "$OUT/auto_compare_cuda.jsonl" 2> /tmp/o/auto_compare_cuda.err
cat "$OUT"/auto_*_cuda.jsonl | cut -c1-160; cat "$OUT/pytest_auto.txt"; tail -n 5 /tmp/o/auto_*.err
fi

# ---- 2a. Gowalla recipes (each stops at a chunk boundary after MINUTES)
if want gowalla; then
B=benchmarks/graph/lightgcn_bench.py
LOGDIR=${LOGDIR:-/tmp/o/gowalla}; mkdir -p "$LOGDIR"
recipe() {  # name warmup_epochs negatives bpr_batch bpr_lr epochs [hard_negatives [l2]]
  python3 $B train --dataset gowalla --device cuda --threads 2 --chunk 10 --epochs "$6" \
    --loss bpr --warmup-epochs "$2" --warmup-lr 5e-3 --negatives "$3" --similarity dot \
    --temperature 1.0 --batch-size "$4" --lr "$5" --hard-negatives "${7:-1}" --l2 "${8:-1e-4}" \
    --max-minutes "$MINUTES" --run-dir "/tmp/run-$1" \
    --log "$LOGDIR/gowalla_gpu_$1.jsonl" > "/tmp/o/$1.out" 2>&1 &
}
case ${GRID:-hardneg_l2} in
warmup)  # 2026-11-27: uniform BPR negatives after a softmax warm-up; 10 / 1024 -> 4096, 1e-3 led
  recipe w10_b4096_lr1e-3 10 1024 4096 1e-3 280
  recipe w10_b4096_lr2e-3 10 1024 4096 2e-3 280
  recipe w10_b4096_lr5e-3 10 1024 4096 5e-3 280
  recipe w6_b4096_lr1e-3 6 1024 4096 1e-3 280
  recipe w8n4096_b4096_lr1e-3 8 4096 4096 1e-3 250
  recipe w10_b2048_lr1e-3 10 1024 2048 1e-3 170 ;;
hardneg)  # 2026-11-27: dynamic hard negatives (best of M uniform candidates), l2 1e-4
  recipe w10_dns4_b4096_lr1e-3 10 1024 4096 1e-3 280 4
  recipe w10_dns8_b4096_lr1e-3 10 1024 4096 1e-3 280 8
  recipe w10_dns16_b4096_lr1e-3 10 1024 4096 1e-3 280 16
  recipe w10_dns32_b4096_lr1e-3 10 1024 4096 1e-3 280 32
  recipe w10_dns8_b4096_lr2e-3 10 1024 4096 2e-3 280 8
  recipe w0_dns16_b4096_lr2e-3 0 1024 4096 2e-3 280 16 ;;
hardneg_l2)  # 2026-11-27: hardneg overfits after its peak (w0 dns16: epoch 40, then down): stronger L2
  recipe w0_dns16_b4096_lr2e-3_l2_1e-3 0 1024 4096 2e-3 280 16 1e-3
  recipe w0_dns16_b4096_lr2e-3_l2_3e-3 0 1024 4096 2e-3 280 16 3e-3
  recipe w0_dns16_b4096_lr2e-3_l2_1e-2 0 1024 4096 2e-3 280 16 1e-2
  recipe w0_dns8_b4096_lr2e-3_l2_1e-3 0 1024 4096 2e-3 280 8 1e-3
  recipe w0_dns32_b4096_lr2e-3_l2_3e-3 0 1024 4096 2e-3 280 32 3e-3
  recipe w10_dns4_b4096_lr1e-3_l2_1e-3 10 1024 4096 1e-3 280 4 1e-3 ;;
esac
fi

# ---- 2b. CUDA tests
if want tests; then  # alongside the pipeline: correctness only
  (timeout 200 python3 -m pytest -q -p no:cacheprovider packages/glta-gllm/tests \
    packages/glta-graph/tests -k "cuda or Cuda or CUDA or test_cuda" 2>&1 | tail -n 25 \
    > "$OUT/pytest_cuda.txt") &
fi

# ---- 2c. glta pipeline on the GPU, random SmolLM2-shaped LLM (bf16)
if want pipeline; then
python3 - <<'EOF'
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig.from_pretrained(".gpu/smolcfg")
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained("/tmp/smol-random")
AutoTokenizer.from_pretrained(".gpu/tok").save_pretrained("/tmp/smol-random")
print("random SmolLM2-shaped model:", sum(p.numel() for p in model.parameters()), "params")
EOF
/usr/bin/time -v timeout ${PIPELINE_TIMEOUT:-200} python3 -m glta_cli.app pipeline --quiet --out /tmp/run-pipeline \
  --llm.model /tmp/smol-random --llm.dtype bfloat16 --graph.device cuda ${PIPELINE_ARGS:-} \
  > "$OUT/pipeline_gpu.txt" 2>&1
echo "pipeline exit $?"; tail -n 40 "$OUT/pipeline_gpu.txt"
cp /tmp/run-pipeline/metrics.json /tmp/run-pipeline/report.md /tmp/o/ 2>/dev/null
find /tmp/run-pipeline -maxdepth 3 | sort > /tmp/o/pipeline_tree.txt
fi

wait
cat "$OUT/pytest_cuda.txt" 2>/dev/null
for f in /tmp/o/w*.out; do echo "== $f"; tail -n 2 "$f" | cut -c1-300; done
nvidia-smi --query-gpu=memory.used --format=csv
# at most 8 files come back: the Gowalla logs in one archive, the rest (stderr, metrics) in another
tar czf "$OUT/gowalla_gpu.tgz" -C /tmp/o gowalla
tar czf "$OUT/misc.tgz" -C /tmp/o --exclude gowalla .
