#!/usr/bin/env bash
# The ResNet's and the GPT's full training runs, in both backends, on one GPU: the figures
# behind the README's "ResNet" and "GPT" tables (docs/train-{resnet,gpt}-*-gpu.jsonl).
#
#   bash docs/scripts/gpu_train.sh OUT_DIR
#
# Needs Fashion-MNIST in $JAXNET_DATA (or .devdata/) and the fortunes files in
# $JAXNET_CORPUS (or .devdata/fortunes). Two streams share the GPU: the ResNet runs (torch,
# then jax) and the GPT runs (two seeds per backend: what two correct runs of one backend
# differ by is the yardstick for the backends' difference). Each run's per-epoch metrics go to
# OUT_DIR/<model>-<backend>-s<seed>.jsonl and its printed output to the matching .log.
set -uo pipefail
out=${1:?usage: gpu_train.sh OUT_DIR}
mkdir -p "$out"
data=${JAXNET_DATA:-.devdata}
corpus=${JAXNET_CORPUS:-.devdata/fortunes}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # two processes share the GPU
py=${PYTHON:-python3}

run() {  # model backend seed [flags...]
  local model=$1 backend=$2 seed=$3
  shift 3
  local name="$model-$backend-s$seed"
  local start=$SECONDS
  PYTHONPATH=$PWD $py -m jaxnet train --model "$model" --backend "$backend" --device cuda \
    --seed "$seed" --metrics "$out/$name.jsonl" --no-progress "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s"
}

(
  run resnet torch 0 --data-dir "$data"
  run resnet jax 0 --data-dir "$data"
) &
(
  run gpt jax 0 --corpus-dir "$corpus"
  run gpt torch 0 --corpus-dir "$corpus"
  run gpt jax 1 --corpus-dir "$corpus"
  run gpt torch 1 --corpus-dir "$corpus"
) &
wait
