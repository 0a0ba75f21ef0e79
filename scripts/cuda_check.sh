#!/usr/bin/env bash
# CUDA check for a lent GPU machine: the CUDA parity tests, one epoch of each preset, a
# two-minute recipe run, a one-process torchrun (nccl) epoch and the tiny benchmarks on the
# GPU. Usage: scripts/cuda_check.sh DATA_DIR OUT_DIR (from the repository root; no install
# needed: it runs the checkout through PYTHONPATH). Every step runs even if one fails.
set -u
data=${1:?data folder with the Fashion-MNIST IDX files}
out=${2:?folder for the logs and metrics}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, print the wall time and exit code
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "=== $name: rc=$? wall=$((SECONDS - start)) s"
}
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
step "cuda parity tests" 180 $py -m pytest -q -n 4 -p no:cacheprovider tests/test_cuda.py
train=($py -m mondeq train --device cuda --data-dir "$data" --no-progress --epochs 1)
for model in fc single-conv multi-conv; do
    step "train $model, 1 epoch" 120 "${train[@]}" --model "$model" --out "/tmp/run-$model"
    cp "/tmp/run-$model/metrics.csv" "$out/$model.csv"
done
step "torchrun 1 process (nccl), 1 epoch fc" 100 $py -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m mondeq train --device cuda --data-dir "$data" --no-progress --epochs 1 --model fc --out /tmp/run-ddp
cp /tmp/run-ddp/metrics.csv "$out/ddp.csv"
step "recipe, 2 minutes" 170 $py -m mondeq train --recipe fmnist-hour --device cuda --data-dir "$data" \
    --no-progress --time-budget 2m --out /tmp/run-recipe
cp /tmp/run-recipe/metrics.csv "$out/recipe.csv"
step "tiny benchmarks on cuda" 150 $py -m mondeq bench --tiny --device cuda --out /tmp/bench
cp /tmp/bench/benchmarks-tiny.md "$out/"
