#!/usr/bin/env bash
# feather-smol end to end on one GPU, as one run: SmolLM2 from its GGUF, the LoRA training of
# weights/feather-smol, the full folder built from base + delta, then Table 1's headline rows on
# the first LIMIT test questions (float32). The recipe is fixed here, before any pruned number is
# seen (the model card repeats it); STEPS and LIMIT, and BATCH and VAL in the environment, shrink
# it for a dry run on the CPU only:
#
#   scripts/smol_gpu.sh GGUF WORK OUT [STEPS] [LIMIT]        # GPU: DEVICE=cuda (default)
#   DEVICE=cpu WORKERS=0 BATCH=1 VAL=2 scripts/smol_gpu.sh ~/smol.gguf /tmp/w /tmp/o 2 2   # the dry run
#
# gguf must be importable (pip install gguf, or PYTHONPATH=its --target folder).
#
# WORK holds the 540 MB base and the built model; OUT gets what comes back: the logs, eval's
# table, and the trained delta as a tar in parts of at most 15 MB.
set -euo pipefail
gguf=$1; work=$2; out=$3; steps=${4:-1500}; limit=${5:-400}
device=${DEVICE:-cuda}; workers=${WORKERS:-12}; batch=${BATCH:-16}; val=${VAL:-100}
mkdir -p "$work" "$out"
fm() { python -m feather_mini "$@"; }

fm fetch smollm2 --gguf "$gguf" --cache "$work/cache" 2>&1 | tee "$out/fetch.txt"
start=$(date +%s)
fm train --preset smol --base "$work/cache/smollm2" --device "$device" --workers "$workers" --out "$work/run" \
    --steps "$steps" --batch "$batch" --turns 8 --lookalike 0.5 --curriculum 0 --lr 5e-4 --warmup 100 \
    --lora-rank 16 --lora-alpha 32 --seed 0 --val "$val" --checkpoint-every 500 --log-every 50 2>&1 | tee "$out/train.txt"
echo "training wall time: $(( $(date +%s) - start )) s" | tee -a "$out/train.txt"
fm fetch feather-smol --delta "$work/run" --out "$work/feather-smol" --cache "$work/cache" 2>&1 | tee -a "$out/fetch.txt"
fm eval --weights "$work/feather-smol" --device "$device" --dtype float32 --limit "$limit" \
    --methods none,fastv,fastv_norope,pyramid_drop,feather 2>&1 | tee "$out/eval.txt"
tar -C "$work/run" -cf - --exclude checkpoint . | split -b 15M - "$out/feather-smol.tar.part-"
ls -l "$out"
