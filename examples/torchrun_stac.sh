#!/usr/bin/env bash
# Multi-node pretraining from a STAC-GeoParquet catalog of COGs in object storage (docs/cloud.md).
# Run on every node with the same catalog file (copied or on a shared mount); each rank and
# loader worker reads its own part of the chip stream straight from the bucket.
set -euo pipefail
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}
GPUS=${GPUS:-4}
MASTER_ADDR=${MASTER_ADDR:-node0}
MASTER_PORT=${MASTER_PORT:-29500}
# private buckets: credentials from the environment or ~/.aws, never in the config
# export AWS_PROFILE=pretraining

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m geodino fit --config configs/stac_sentinel2.yaml \
  --data.init_args.dataset.init_args.catalog catalogs/s2.parquet \
  --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" \
  --trainer.strategy ddp --trainer.precision bf16-mixed \
  --ckpt_path last   # resumes exactly after a node or the storage went away
