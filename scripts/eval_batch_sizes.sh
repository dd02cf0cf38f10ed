#!/usr/bin/env bash
# eval --batch-size on feather-576: the wall time of one eval (200 test questions, the rows none,
# fastv at layers 1 and 2, feather; model loading included) per batch size, one after another in
# one run, and the sha256 of each JSON output, which must not change with the batch size.
#   scripts/eval_batch_sizes.sh > results/eval_batch_sizes.txt
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
for bs in 1 4 8 16 32; do
  start=$(date +%s.%N)
  python -m feather_mini eval --weights weights/feather-576 --limit 200 --methods none,fastv,feather \
      --batch-size "$bs" --json > "$out/$bs.json" 2>/dev/null
  end=$(date +%s.%N)
  echo "batch-size $bs: $(python -c "print(f'{$end - $start:.1f}')") s, output sha256 $(sha256sum "$out/$bs.json" | cut -c1-16)"
done
