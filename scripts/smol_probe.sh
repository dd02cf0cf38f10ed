#!/usr/bin/env bash
# Time the smol preset on a device before the real run, without the GGUF: a base of SmolLM2's
# shape with random weights (config and tokenizer from a fetched smollm2 folder), 20 training
# steps of the recipe's batch, validation, the merge, and eval of two methods on 16 questions.
# It exercises every device path scripts/smol_gpu.sh takes (bfloat16 autocast, data workers,
# batched decoding); its accuracies are meaningless (random weights).
#
#   scripts/smol_probe.sh SMOLLM2_DIR WORK        # SMOLLM2_DIR: config.json + tokenizer.json + source.json
#   DEVICE=cpu WORKERS=2 BATCH=1 STEPS=2 LIMIT=2 scripts/smol_probe.sh ~/.cache/feather_mini/smollm2 /tmp/p
set -euo pipefail
src=$1; work=$2
device=${DEVICE:-cuda}; workers=${WORKERS:-12}; batch=${BATCH:-16}; steps=${STEPS:-20}; limit=${LIMIT:-16}
source "$(dirname "$0")/smol_recipe.sh"
py=${PYTHON:-python}   # PYTHON=python3 where there is no `python`
fm() { "$py" -m feather_mini "$@"; }
now() { date +%s.%N | cut -c1-14; }

"$py" - "$src" "$work/cache/smollm2" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from feather_mini.checkpoint import text_config_from_dict, text_shapes
from feather_mini.processing import read_json
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
config, tied = text_config_from_dict(read_json(src / "config.json"), str(src / "config.json"))
g = torch.Generator().manual_seed(0)
save_file({k: torch.ones(s) if "norm" in k else torch.randn(s, generator=g) * 0.02
           for k, s in text_shapes(config, tied).items()}, str(dst / "model.safetensors"))
for name in ("config.json", "tokenizer.json", "source.json"):
    shutil.copy(src / name, dst / name)
PY
s=$(now)
fm train "${RECIPE[@]}" --base "$work/cache/smollm2" --device "$device" --workers "$workers" --out "$work/run" \
    --steps "$steps" --batch "$batch" --val 16 --checkpoint-every "$steps" --log-every 5
echo "train: $s .. $(now)"
s=$(now); fm fetch feather-smol --delta "$work/run" --out "$work/feather-smol" --cache "$work/cache"; echo "build: $s .. $(now)"
s=$(now); fm eval --weights "$work/feather-smol" --device "$device" --dtype float32 --limit "$limit" --methods none,fastv
echo "eval: $s .. $(now)"
