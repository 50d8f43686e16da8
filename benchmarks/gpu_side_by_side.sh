#!/usr/bin/env bash
# GPU side by side (issue 17): geodino's DINOv2Task step vs the official DINOv2 step, bf16,
# ViT-S/14 at batch 64 and ViT-B/14 at batch 32 (4 registers, 13 bands, 2 x 224 + 8 x 98
# crops, 65,536 prototypes): images/s, peak memory, tokens/s and MFU per side, then one
# round with the phases timed (each phase edge synchronises the GPU, so its steps are slower)
# and the multi-crop share of the step. The official side uses the real xFormers when it
# imports, else the plain-PyTorch stand-in of benchmarks/official_dinov2.py (the output says
# which). Results land in OUT (default gpu_side_by_side/), one .txt and one .json per run.
#
#   git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2   # not shipped
#   bash benchmarks/gpu_side_by_side.sh /tmp/dinov2 [OUT]
#
# Expected to take 6-8 minutes on one H100 (not run yet: no GPU was lent to issue 17).
set -euo pipefail
OFFICIAL=$(realpath "${1:?usage: gpu_side_by_side.sh DINOV2_CHECKOUT [OUT]}")
OUT=$(realpath -m "${2:-gpu_side_by_side}")
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

run() {  # name, then train_step.py arguments
    local name=$1
    shift
    "$PYTHON" benchmarks/train_step.py --official "$OFFICIAL" --device cuda \
        --precisions bf16-mixed --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt"
}

run vits14_b64 --model vit_small_patch14_reg4_dinov2 --batches 64 --rounds 2 --warmup 3 --steps 10
run vitb14_b32 --model vit_base_patch14_reg4_dinov2 --batches 32 --rounds 2 --warmup 3 --steps 10
run vits14_b64_phases --model vit_small_patch14_reg4_dinov2 --batches 64 --rounds 1 \
    --warmup 3 --steps 5 --cuda-phases
run vitb14_b32_phases --model vit_base_patch14_reg4_dinov2 --batches 32 --rounds 1 \
    --warmup 3 --steps 5 --cuda-phases
