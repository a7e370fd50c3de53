#!/usr/bin/env bash
# The DeiT-S training-cost benchmark on a CUDA GPU (issue 13): not run yet, no GPU was lent when it was written.
# Targets: a brief candidate under 15 s, a 24-candidate brief search under 10 minutes. Run from the repository root:
#   bash benchmarks/gpu_train_cost.sh [python]
# Prints the device, the measured steps and the projection as one JSON line, and checks AMP end to end on
# real digits searches (bf16 or fp16 as the GPU supports, and --no-amp), which the CPU-only suite cannot.
set -euo pipefail
PY=${1:-python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), 'bf16' if torch.cuda.is_bf16_supported() else 'fp16')"
"$PY" benchmarks/train_cost.py --train-device cuda --steps 10 --workers 4 --no-write
OUT=$(mktemp -d)
for amp in "" "--no-amp"; do
  /usr/bin/time -f "digits brief search $amp: %e s" "$PY" -m vitsearch -q search --train-device cuda $amp --trials 6 \
    --study "gpu$amp" --reports "$OUT" --tables "$OUT/tables" --threads 1
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['training'])" "$OUT/gpu$amp/study.json"
done
rm -rf "$OUT"
