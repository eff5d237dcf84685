#!/usr/bin/env bash
# GPU check of slimlm under torchrun/accelerate (DDP, FSDP + resume, DeepSpeed ZeRO-3); prints a table.
# Usage: bench/multi_gpu_check.sh   (PY=python NGPU=... CHECK_DIR=... to override; needs a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 540 "$PY" bench/multi_gpu_check.py
