#!/usr/bin/env bash
# Start this node's share of a multi-node finetune run, without ssh: run it on every node
# (by hand, from a scheduler, or from scripts/slurm/finetune.sbatch) with its NODE_RANK.
#
#   NODE_RANK=0 scripts/launch_node.sh HOSTFILE CONFIG [finetune train options...]   # node 0
#   NODE_RANK=1 scripts/launch_node.sh HOSTFILE CONFIG [finetune train options...]   # node 1
#
# HOSTFILE is the same DeepSpeed hostfile on every node ("HOSTNAME slots=GPUS" lines, in
# node-rank order); this node starts as many ranks as its line's slots. Each host name
# must be distinct (on one machine, "localhost" and "127.0.0.1" name two nodes).
#
# Environment:
#   NODE_RANK    this node's line in the hostfile, from 0 (required)
#   MASTER_ADDR  address of node 0 reachable from all nodes (default: the first host)
#   MASTER_PORT  a free TCP port on node 0 (default 29500)
set -euo pipefail

if [[ $# -lt 2 || -z ${NODE_RANK:-} ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hostfile=$1
config=$2
shift 2
[[ -f $hostfile ]] || { echo "error: hostfile $hostfile not found" >&2; exit 2; }
[[ -f $config ]] || { echo "error: config $config not found" >&2; exit 2; }

first_host=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")
exec deepspeed \
    --no_ssh \
    --node_rank "$NODE_RANK" \
    --hostfile "$hostfile" \
    --master_addr "${MASTER_ADDR:-$first_host}" \
    --master_port "${MASTER_PORT:-29500}" \
    --module finetune.cli train "$config" "$@"
