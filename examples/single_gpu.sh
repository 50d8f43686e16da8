#!/usr/bin/env bash
# One GPU, bf16 autocast; the same config runs on the CPU with --trainer.accelerator=cpu.
set -euo pipefail
geodino fit --config configs/sentinel2.yaml --trainer.accelerator gpu --trainer.devices 1 \
  --trainer.precision bf16-mixed "$@"
