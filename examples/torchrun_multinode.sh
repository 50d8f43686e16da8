#!/usr/bin/env bash
# Multi-node pretraining with torchrun: run this script on every node.
# Lightning detects torchrun's environment (TorchElasticEnvironment), so geodino needs no
# launcher of its own. Set NNODES, NODE_RANK, MASTER_ADDR on each node; GPUS per node.
set -euo pipefail
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}
GPUS=${GPUS:-4}
MASTER_ADDR=${MASTER_ADDR:-node0}
MASTER_PORT=${MASTER_PORT:-29500}

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m geodino fit --config configs/sentinel2.yaml \
  --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" \
  --trainer.strategy ddp --trainer.precision bf16-mixed \
  --ckpt_path last   # resumes if a checkpoint exists (on any number of devices)
