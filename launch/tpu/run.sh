#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (multi-host): the same command runs on every worker.
#
#   launch/tpu/run.sh TPU_NAME ZONE configs/X.py gs://BUCKET/runs/NAME [--config.k=v ...]
#
# Environment (optional):
#   PROJECT      gcloud project (default: gcloud's configured one)
#   REPO_DIR     checkout path on the workers (default: ~/tta-jax); it must already exist there, with
#                its venv at $REPO_DIR/.venv (see `setup` below)
#   SETUP=1      first run: copy the repo and build the venv on every worker before training
#
# How it works: `gcloud compute tpus tpu-vm ssh --worker=all` starts one process per host;
# launch/train.py detects the pod (TPU_WORKER_HOSTNAMES lists several workers) and calls
# jax.distributed.initialize(), which on TPU needs no arguments. Every host reads its own shard of
# the data (grain shards by jax.process_index()) and the global batch is config.train.batch_size.
# The workdir must be shared storage (a gs:// bucket or a filesystem mounted on all workers):
# Orbax writes one checkpoint from all hosts. Preemption (spot/queued resources) sends SIGTERM; the
# trainer checkpoints at a step all hosts agree on (JAX's preemption sync point) and exits 0, so the
# same command resumes. Logs: /tmp/tta_train.log on every worker (process 0 also writes
# WORKDIR/metrics.jsonl and WORKDIR/tb).
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,20p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_DIR=${REPO_DIR:-'~/tta-jax'}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
EXTRA=$(printf ' %q' "$@")

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

if [[ "${SETUP:-0}" == "1" ]]; then
  gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" $PROJECT_FLAG --worker=all \
    "$(git rev-parse --show-toplevel)" "$TPU_NAME:$REPO_DIR"
  ssh_all "cd $REPO_DIR && python3.11 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . \
           && .venv/bin/pip install -q 'jax[tpu]==0.10.2'"
fi

# Stop a previous run started by this script (its pid file), then start the run on all workers.
ssh_all "if [ -f /tmp/tta_train.pid ]; then kill \$(cat /tmp/tta_train.pid) 2>/dev/null || true; sleep 5; fi; \
  cd $REPO_DIR && nohup .venv/bin/python -m launch.train --config $CONFIG --workdir $WORKDIR \
  --distributed=on $EXTRA > /tmp/tta_train.log 2>&1 & echo \$! > /tmp/tta_train.pid"
echo "started on all workers of $TPU_NAME; follow with:"
echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f /tmp/tta_train.log'"
