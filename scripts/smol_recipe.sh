# feather-smol's training recipe, fixed before any result was seen (README repeats it); sourced by
# smol_gpu.sh, which adds the steps, batch, validation and device, and by smol_probe.sh, which times it.
RECIPE=(--preset smol --turns 8 --lookalike 0.5 --curriculum 0 --lr 5e-4 --warmup 100
        --lora-rank 16 --lora-alpha 32 --seed 0)
