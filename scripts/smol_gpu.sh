#!/usr/bin/env bash
# feather-smol end to end on one GPU, as one run: SmolLM2 from its GGUF, the LoRA training of
# weights/feather-smol, the full folder built from base + delta, then Table 1's headline rows on
# the first LIMIT test questions (float32). The recipe was fixed before any pruned number was
# seen (scripts/smol_recipe.sh); STEPS and LIMIT, and BATCH and VAL in the environment, shrink
# it for a dry run on the CPU only:
#
#   scripts/smol_gpu.sh GGUF WORK OUT [STEPS] [LIMIT]        # GPU: DEVICE=cuda (default)
#   DEVICE=cpu WORKERS=0 BATCH=1 VAL=2 scripts/smol_gpu.sh ~/smol.gguf /tmp/w /tmp/o 2 2   # the dry run
#
# gguf must be importable (pip install gguf, or PYTHONPATH=its --target folder). PYTHON=python3
# where there is no `python`. scripts/smol_probe.sh times the same steps first, without the GGUF.
#
# WORK holds the 540 MB base and the built model; OUT gets what comes back: the logs, the trained
# delta as a tar in parts of at most 15 MB (written before eval starts), and eval's tables.
# DEADLINE (epoch seconds, optional) is when a lease ends: training is stopped 45 s before it (the
# delta of its last checkpoint comes back), eval's groups of rows that cannot start 30 s before it
# are skipped and one that runs past it is stopped.
set -euo pipefail
gguf=$1; work=$2; out=$3; steps=${4:-1500}; limit=${5:-400}
device=${DEVICE:-cuda}; workers=${WORKERS:-12}; batch=${BATCH:-16}; val=${VAL:-100}; deadline=${DEADLINE:-0}
mkdir -p "$work" "$out"
source "$(dirname "$0")/smol_recipe.sh"
py=${PYTHON:-python}
fm() { "$py" -m feather_mini "$@"; }
left() { if (( deadline )); then echo $(( deadline - $(date +%s) )); else echo 86400; fi; }

fm fetch smollm2 --gguf "$gguf" --cache "$work/cache" 2>&1 | tee "$out/fetch.txt"
start=$(date +%s)
# Stopped 45 s before DEADLINE, so that the last checkpoint's delta still comes back (train.txt says so).
timeout "$(( $(left) > 46 ? $(left) - 45 : 1 ))" "$py" -m feather_mini train "${RECIPE[@]}" --base "$work/cache/smollm2" \
    --device "$device" --workers "$workers" --out "$work/run" --steps "$steps" --batch "$batch" \
    --val "$val" --checkpoint-every 500 --log-every 50 2>&1 | tee "$out/train.txt" \
    || echo "train: stopped, exit $? (124: at DEADLINE)" | tee -a "$out/train.txt"
echo "training wall time: $(( $(date +%s) - start )) s" | tee -a "$out/train.txt"
test -f "$work/run/delta.safetensors" || { echo "no delta in $work/run"; exit 1; }
tar -C "$work/run" -cf - --exclude checkpoint . | split -b 15M - "$out/feather-smol.tar.part-"
fm fetch feather-smol --delta "$work/run" --out "$work/feather-smol" --cache "$work/cache" 2>&1 | tee -a "$out/fetch.txt"
# The headline rows first, so that a short lease still measures FastV against no pruning.
for methods in none,fastv feather fastv_norope,pyramid_drop; do
    if (( $(left) < 30 )); then echo "eval $methods: skipped, $(left) s left before DEADLINE" | tee -a "$out/eval.txt"; continue; fi
    s=$(date +%s)
    timeout "$(left)" "$py" -m feather_mini eval --weights "$work/feather-smol" --device "$device" --dtype float32 \
        --limit "$limit" --methods "$methods" 2>&1 | tee -a "$out/eval.txt" || echo "eval $methods: stopped at DEADLINE" | tee -a "$out/eval.txt"
    echo "eval $methods: $(( $(date +%s) - s )) s on $device" | tee -a "$out/eval.txt"
done
ls -l "$out"
