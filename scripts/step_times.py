"""Seconds per training step of the '576' preset and of the deeper and wider decoders it was chosen
over: the step `python -m feather_mini train --preset 576 --turns 8` runs (train.make_batch and
train.train_step, batch 8 chats, forward + backward + clipped AdamW), 2 threads, random weights.

    python scripts/step_times.py > results/step_times_576.txt     # about a minute on 2 cores

Time it on a quiet machine: anything running beside it (a training run, the tests) slows
every row, unevenly.
"""
import statistics
import time
from dataclasses import replace

import torch

from feather_mini import synthetic, train
from feather_mini import LlavaForConditionalGeneration

DECODERS = [(8, 4), (16, 4), (8, 1), (16, 1)]  # (layers, heads) at width 128: heads of 32 or one head of 128
WARMUP, TIMED = 2, 4


def step_seconds(layers: int, heads: int) -> tuple[int, float]:
    """(parameters, median seconds of TIMED steps after WARMUP) for the '576' preset with this decoder."""
    tokenizer = train.make_tokenizer()
    config = train.model_config("576", tokenizer.get_vocab_size())
    text = replace(config.text_config, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=heads, head_dim=config.text_config.hidden_size // heads)
    config = replace(config, text_config=text)
    model = LlavaForConditionalGeneration(config)
    train.init_weights(model, 0)
    processor, optimizer = train.make_processor(tokenizer, config), train.make_optimizer(model, 5e-4)
    model.train()
    times = []
    for step in range(WARMUP + TIMED):
        t0 = time.perf_counter()
        train.train_step(model, optimizer, train.make_batch(processor, step, 0, 8, 8, synthetic.MAX_OBJECTS, 0.5, config.text_config.eos_token_id))
        times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in model.parameters()), statistics.median(times[WARMUP:])


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"'576' preset (24x24 visual tokens, ViT 128 x 4), batch 8 chats of 8 questions, 2 threads, "
          f"torch {torch.__version__}; median of {TIMED} steps after {WARMUP}")
    print("| decoder (width 128) | parameters | seconds a step |")
    print("|---|---:|---:|")
    for layers, heads in DECODERS:
        params, seconds = step_seconds(layers, heads)
        print(f"| {layers} layers, {heads} head{'s' if heads > 1 else ''} of {128 // heads} | {params:,} | "
              f"{seconds:.2f} |", flush=True)
