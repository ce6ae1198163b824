#!/usr/bin/env bash
# GPU proof, one short script for a lent GPU machine (never part of the tests):
#   for each family (Faster R-CNN, FCOS, SSD, DETR on EfficientNet-Lite0): a short AMP training on BCCD,
#   its evaluation, `detlab bench --device cuda --amp`; then a 1-GPU `torchrun` (NCCL) training.
# Prints img/s and AP50 per family and exits non-zero on the first failure.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repo root
#   DEVICE=cpu EPOCHS=1 bash benchmarks/gpu_check.sh   # plumbing check anywhere (slow, no AMP)
#
# Needs ../shared/datasets/bccd/BCCD and the installed package (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-2}
DATA=${DATA:-../shared/datasets/bccd/BCCD}
OUT=${OUT:-$(mktemp -d)/gpu_check}
mkdir -p "$OUT"
[ -d "$DATA" ] || { echo "gpu_check: $DATA not found (../shared/datasets/bccd)" >&2; exit 2; }
if [ "$DEVICE" = cuda ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: CUDA is not available to torch" >&2; exit 2; }
  python -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  AMP=(--set amp=auto); BENCH_AMP=(--amp)
else
  AMP=(--set amp=off); BENCH_AMP=()
fi

ap50() {  # AP50 of a run's final evaluation, from eval/metrics.json written by `detlab eval RUN`
  python -c "import json,sys; r=json.load(open(sys.argv[1]))['results']['coco']; print(f\"{100*r['AP50']:.1f}\")" "$1"
}

declare -A SIZE=([faster_rcnn_effl0_fpn]="--set model_kwargs.min_size=480 --set model_kwargs.max_size=640"
                 [fcos_effl0_fpn]="--set model_kwargs.min_size=480 --set model_kwargs.max_size=640"
                 [ssdlite_effl0]="" [detr_effl0]="")
status=0
printf '%-24s %10s %8s %12s\n' model train_s AP50 bench_img/s | tee "$OUT/summary.txt"
for model in faster_rcnn_effl0_fpn fcos_effl0_fpn ssdlite_effl0 detr_effl0; do
  run="$OUT/$model"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if ! detlab train --data "$DATA:train" --val "$DATA:val" --model "$model" --weights imagenet --out "$run" \
      --set epochs="$EPOCHS" --set device="$DEVICE" --set batch_size=8 --set report=false "${AMP[@]}" \
      ${SIZE[$model]} > "$run.train.log" 2>&1; then
    echo "gpu_check: training $model failed — see $run.train.log" >&2; tail -20 "$run.train.log" >&2; status=1; continue
  fi
  train_s=$(( $(date +%s) - start ))
  if ! detlab eval "$run" --data "$DATA:test" --device "$DEVICE" --no-analysis > "$run.eval.log" 2>&1; then
    echo "gpu_check: evaluating $model failed — see $run.eval.log" >&2; tail -20 "$run.eval.log" >&2; status=1; continue
  fi
  if ! detlab bench --model "$run" --device "$DEVICE" "${BENCH_AMP[@]}" --iters 20 > "$run.bench.log" 2>&1; then
    echo "gpu_check: bench $model failed — see $run.bench.log" >&2; tail -20 "$run.bench.log" >&2; status=1; continue
  fi
  ips=$(awk '$1 == "eager" {print $4}' "$run.bench.log")  # the eager row of the bench table: img/s column
  printf '%-24s %10s %8s %12s\n' "$model" "$train_s" "$(ap50 "$run/eval/metrics.json")" "${ips:-?}" | tee -a "$OUT/summary.txt"
done

# One process per GPU under torchrun: NCCL on CUDA (gloo on CPU), rank 0 logs and checkpoints.
if ! torchrun --standalone --nproc_per_node 1 -m detlab train --data "$DATA:train" --val "$DATA:val" \
    --model fcos_effl0_fpn --weights imagenet --out "$OUT/torchrun" --set epochs=1 --set device="$DEVICE" \
    --set report=false --set model_kwargs.min_size=320 --set model_kwargs.max_size=448 "${AMP[@]}" \
    > "$OUT/torchrun.log" 2>&1; then
  echo "gpu_check: torchrun (1 process) failed — see $OUT/torchrun.log" >&2; tail -20 "$OUT/torchrun.log" >&2; status=1
else
  echo "torchrun 1 process: ok ($(grep -c '"type": "eval"' "$OUT/torchrun/metrics.jsonl") evaluations logged)"
fi
echo "gpu_check: outputs in $OUT; exit $status"
exit $status
