#!/usr/bin/env bash
# Start a finetune run on every node of a DeepSpeed hostfile, from one machine.
#
#   scripts/launch_multinode.sh HOSTFILE CONFIG [finetune train options...]
#
# HOSTFILE lists one node per line as "HOSTNAME slots=GPUS" (see scripts/hostfile.example).
# The deepspeed launcher reaches the nodes through pdsh over passwordless ssh, and starts
# `python -m finetune.cli train CONFIG` once per GPU. Every node needs the same Python
# environment and the same paths (config, data, output.dir on a shared filesystem).
# Environment variables listed in ./.deepspeed_env (NAME=value lines) are exported on
# every node.
#
# Environment:
#   MASTER_ADDR  address of rank 0 reachable from all nodes (default: the first host)
#   MASTER_PORT  a free TCP port on it (default 29500)
#   LAUNCHER     pdsh (default), openmpi, mvapich, slurm: how deepspeed reaches the nodes
#   NUM_NODES    use only the first N hosts of the hostfile (default: all)
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hostfile=$1
config=$2
shift 2
[[ -f $hostfile ]] || { echo "error: hostfile $hostfile not found" >&2; exit 2; }
[[ -f $config ]] || { echo "error: config $config not found" >&2; exit 2; }

first_host=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")
args=(
    --hostfile "$hostfile"
    --launcher "${LAUNCHER:-pdsh}"
    --master_addr "${MASTER_ADDR:-$first_host}"
    --master_port "${MASTER_PORT:-29500}"
)
if [[ -n ${NUM_NODES:-} ]]; then
    args+=(--num_nodes "$NUM_NODES")
fi
exec deepspeed "${args[@]}" --module finetune.cli train "$config" "$@"
