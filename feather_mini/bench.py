"""Benchmarks: how much faster the prefill gets when visual tokens are pruned, against
FastV's FLOPs ideal, against transformers on the same weights, and as the image grows.

    python -m feather_mini bench                                    # CPU preset, 24x24 = 576 visual tokens
    python -m feather_mini bench --grid 12,24,48 --json bench.json  # + 144 and 2304 visual tokens
    python -m feather_mini bench --preset llava-1.5-7b --device cuda

Nothing is downloaded: the weights are random, of a preset's shape. The prompt is laid out
like LLaVA-1.5's: 5 text tokens, the visual span, 35 more. The vision tower runs once per
grid, timed on its own; the timed prefills (ours and transformers') reuse its output, since
pruning cannot change it, so they time the projector, the decoder and the lm_head. Each
round runs every method once, in turn, so a slow moment on a shared machine hits them all
alike; the first round is a warm-up that also measures memory; times are medians of the rest,
and every ratio (speed-up, criteria share, ours / theirs) is the median of its per-round ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace

import torch

from . import cli, pruning
from .checkpoint import canonical_key, resolve_device, resolve_dtype
from .model import KVCache, LlavaConfig, LlavaForConditionalGeneration, TextConfig, VisionConfig
from .processing import Inputs

# -----------------------------------------------------------------------------
# Shapes, random weights, random inputs

TEXT_BEFORE, TEXT_AFTER = 5, 35  # "<s> USER:" before the visual span; the question and " ASSISTANT:" after it
METHODS = cli.DEFAULT_METHODS  # "none", the baseline, always runs
SCALING_METHODS = ["none", "feather"]  # what runs at the grids other than the preset's own
MODEL_SIZES = {  # name -> (its own grid side, decoder, vision tower); the image size follows the grid
    # LLaVA-1.5's token layout (14 px patches: 336 px for 24x24) with models a CPU runs in
    # seconds: Vicuna-7B at a quarter of its width (heads of 64 instead of 128; MLP 2.75 d, near
    # Llama's 11008 / 4096) and half its depth; CLIP ViT-L/14 at a quarter width, half depth.
    "cpu": (24, TextConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16),
            VisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=4)),
    "llava-1.5-7b": (24, TextConfig(), VisionConfig()),  # the real sizes, for a GPU
    "tiny": (12, TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
             VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=4)),
}


def llava_config(sizes: str, side: int, new_tokens: int) -> LlavaConfig:
    """The model of MODEL_SIZES[sizes] for a side x side grid of visual tokens, its context
    stretched to the prompt if needed."""
    _, text, vision = MODEL_SIZES[sizes]
    length = TEXT_BEFORE + side * side + TEXT_AFTER + new_tokens
    return LlavaConfig(vision_config=replace(vision, image_size=side * vision.patch_size),
                       text_config=replace(text, max_position_embeddings=max(text.max_position_embeddings, length)))


def random_model(config: LlavaConfig, device: torch.device, dtype: torch.dtype, seed: int):
    """Seeded random weights, allocated once, on the device and in the dtype (a 7B model never
    passes through CPU float32). Matrices with std 0.02 as transformers initializes them, so
    activations stay finite in float16, drawn uniform (3x faster than normal on a CPU); norms 1, biases 0."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1 and name.endswith("weight"):  # every 1-d weight is a norm's
                p.fill_(1.0)
            else:
                p.uniform_(-0.02 * 3 ** 0.5, 0.02 * 3 ** 0.5, generator=generator)
    return model.eval().requires_grad_(False)


def random_inputs(config: LlavaConfig, seed: int) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.image_token_index, (TEXT_BEFORE + TEXT_AFTER,), generator=g)
    text[0] = config.text_config.bos_token_id
    visual = torch.full((config.num_visual_tokens,), config.image_token_index)
    ids = torch.cat([text[:TEXT_BEFORE], visual, text[TEXT_BEFORE:]])[None]
    S, side = config.vision_config.image_size, config.vision_config.grid_side
    return Inputs(ids, torch.randn(1, 3, S, S, generator=g), TEXT_BEFORE, config.num_visual_tokens, (side, side))


def transformers_twin(model: LlavaForConditionalGeneration):
    """transformers' LlavaForConditionalGeneration (sdpa attention) on our model's very tensors.
    It is built with tensors of its own first, replaced at once: for that moment the weights exist
    twice (a 7B float16 model: 2 x 14 GB on the GPU)."""
    import transformers
    from transformers.initialization import no_init_weights

    config = transformers.LlavaConfig(**asdict(model.config))  # ours is shaped like config.json
    with torch.device(model.device), no_init_weights():  # its random init would be overwritten anyway
        hf = transformers.LlavaForConditionalGeneration._from_config(config, dtype=model.dtype,
                                                                    attn_implementation="sdpa")
    ours = model.state_dict()
    # Our keys are llava-hf's on-disk layout; canonical_key maps transformers' in-memory keys to it.
    hf.load_state_dict({k: ours[canonical_key(k)] for k in hf.state_dict() if canonical_key(k) is not None},
                       strict=True, assign=True)  # assign: shared tensors, not a second copy
    return hf.eval().requires_grad_(False)


def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__

# -----------------------------------------------------------------------------
# Timing one prefill and its decoding


@contextlib.contextmanager
def cached_output(module: torch.nn.Module, output):
    """Inside, module(...) returns `output` at once: the prefills skip the vision tower."""
    module.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        del module.forward


def run_ours(model, inputs, schedule, new_tokens: int, device) -> dict:
    """One prefill into a KVCache, then `new_tokens` greedy decode steps on the (pruned) caches."""
    cache = KVCache(model.config.text_config.num_hidden_layers, reserve=new_tokens)
    start = cli.now(device)
    # Generation needs the last row's logits only; the clock times the criteria inside the prefill.
    out = model(inputs, cache, schedule, logits_to_keep=1, clock=functools.partial(cli.now, device))
    prefill = cli.now(device) - start
    kv_bytes, token = cache.nbytes(), out.logits[:, -1:].argmax(-1)
    start = cli.now(device)
    for _ in range(new_tokens):
        token = model.decode_step(token, cache, check_ids=False)[:, -1:].argmax(-1)  # as generate does
    return dict(prefill=prefill, decode=(cli.now(device) - start) / new_tokens, criteria=out.pruning_seconds,
                kept=out.kept, kv_bytes=kv_bytes, last_logits=out.logits[0, -1])


def run_theirs(hf, input_ids, pixel_values, new_tokens: int, device) -> dict:
    """The same in transformers: one forward with use_cache, then single-token forwards."""
    kv = cache_argument(hf)
    start = cli.now(device)
    out = hf(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, logits_to_keep=1)
    prefill = cli.now(device) - start
    cache, token = getattr(out, kv), out.logits[:, -1:].argmax(-1)
    start = cli.now(device)
    for _ in range(new_tokens):
        token = hf(input_ids=token, use_cache=True, **{kv: cache}).logits[:, -1:].argmax(-1)
    return dict(prefill=prefill, decode=(cli.now(device) - start) / new_tokens, last_logits=out.logits[0, -1])


@functools.cache
def cache_argument(hf) -> str:
    """The name of transformers' KV-cache argument: renamed during 5.x."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def peak_bytes(fn, device: torch.device) -> int | None:
    """Most memory held at once by tensors allocated while fn runs, beyond what was held before
    (the weights, the inputs). CUDA: the allocator's statistics. CPU: the running sum of the
    allocations and frees torch's profiler records from torch's CPU allocator (memory that a
    library such as oneDNN allocates by itself is not seen). MPS: None (not measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        fn()  # still the warm-up
        return None
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with hidden_stderr(), torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def hidden_stderr():
    """The profiler logs two lines per use straight to file descriptor 2; send them to /dev/null."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

# -----------------------------------------------------------------------------
# One grid: every method (and transformers) once per round


def bench_grid(args, side: int, schedules: dict, reference: bool, device, dtype) -> dict:
    """schedules: method -> Schedule (None for the baseline, "none")."""
    config = llava_config(args.preset, side, args.new_tokens)
    N = config.num_visual_tokens
    model, inputs = random_model(config, device, dtype, args.seed), random_inputs(config, args.seed)
    pixels = inputs.pixel_values.to(device, dtype)
    inputs = replace(inputs, input_ids=inputs.input_ids.to(device), pixel_values=pixels)  # no copy inside the timing
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        tower = []
        for _ in range(args.runs + 1):  # the first is a warm-up
            start = cli.now(device)
            features = model.vision_tower(pixels, config.vision_feature_layer)
            tower.append(cli.now(device) - start)
        stack.enter_context(cached_output(model.vision_tower, features))
        contenders = {m: functools.partial(run_ours, model, inputs, schedule, args.new_tokens, device)
                      for m, schedule in schedules.items()}
        if reference:
            hf = transformers_twin(model)
            stack.enter_context(cached_output(hf.model.vision_tower,
                                              hf.model.vision_tower(pixels, output_hidden_states=True)))
            contenders["transformers"] = functools.partial(run_theirs, hf, inputs.input_ids, pixels,
                                                           args.new_tokens, device)
        peak = {name: peak_bytes(run, device) for name, run in contenders.items()}  # the warm-up round
        samples = {name: [] for name in contenders}
        names = list(contenders)
        for i in range(args.runs):
            for name in names[i % len(names):] + names[:i % len(names)]:  # each round starts one further on
                samples[name].append(contenders[name]())
    del model, contenders, features, stack  # before the next grid builds its model (a 7B one needs the room)
    if reference:
        del hf
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def ms(name: str, key: str) -> float:
        return 1000 * statistics.median(s[key] for s in samples[name])

    def ratio(a: str, b: str, key: str) -> float:
        """Median over rounds of a's time / b's in the same round: a slow spell of the machine
        hits both sides of each ratio, where a ratio of two medians would take it in full."""
        return statistics.median(x[key] / y[key] for x, y in zip(samples[a], samples[b]))

    rows = []
    mb = lambda nbytes: None if nbytes is None else nbytes / 2 ** 20  # noqa: E731
    for m in schedules:
        last = samples[m][-1]
        reduction = pruning.flops_reduction_of(config, last["kept"], N, inputs.input_ids.shape[1])
        speedup = ratio("none", m, "prefill")
        rows.append(dict(
            method=m, grid=side, visual_tokens=N, text_tokens=inputs.input_ids.shape[1] - N,
            kept={layer: len(idx) for layer, idx in last["kept"].items()}, flops_reduction=reduction,
            ideal_speedup=1 / (1 - reduction),
            measured_speedup=speedup, efficiency=speedup * (1 - reduction),
            criteria_ms=ms(m, "criteria"), criteria_share=statistics.median(s["criteria"] / s["prefill"] for s in samples[m]),
            prefill_ms=ms(m, "prefill"), decode_ms_per_token=ms(m, "decode"),
            kv_cache_mb=last["kv_bytes"] / 2 ** 20, peak_mb=mb(peak[m])))
    result = dict(grid=side, visual_tokens=N, vision_tower_ms=1000 * statistics.median(tower[1:]), rows=rows)
    if reference:
        ours, theirs = samples["none"][-1]["last_logits"], samples["transformers"][-1]["last_logits"]
        result["reference"] = dict(
            library=f"transformers {transformers_version()}", attention="sdpa", grid=side,
            prefill_ms=ms("transformers", "prefill"), decode_ms_per_token=ms("transformers", "decode"),
            peak_mb=mb(peak["transformers"]), prefill_ours_over_theirs=ratio("none", "transformers", "prefill"),
            decode_ours_over_theirs=ratio("none", "transformers", "decode"),
            max_logit_diff=(ours.float() - theirs.float()).abs().max().item())
    return result

# -----------------------------------------------------------------------------
# Report and command line

COLUMNS = [("method", -12), ("grid", 5), ("visual", 6), ("kept per stage", -20), ("FLOPs red.", 10), ("ideal", 6),
           ("measured", 8), ("effic.", 6), ("crit. %", 7), ("prefill ms", 10), ("decode ms/tok", 13),
           ("KV MB", 6), ("peak MB", 7)]  # (title, width); a negative width aligns left


def table_line(cells: list[str]) -> str:
    return "  ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS)).rstrip()


HEADER = table_line([title for title, _ in COLUMNS])
FOOTER = """\
FLOPs red.: FastV's count, 4nd^2 + 2n^2d + 2ndm per layer (it counts the SwiGLU MLP as 2 matrices, not 3);
ideal = 1 / (1 - FLOPs red.); measured = unpruned prefill / this prefill; effic. = measured / ideal;
crit. % = time in the pruning criteria / prefill; KV MB: the cache after the prefill; peak MB: most memory
allocated at once during prefill + decode beyond the weights (CPU: torch's allocator, as its profiler sees it)."""


def format_row(r: dict) -> str:
    return table_line([
        r["method"], f"{r['grid']}x{r['grid']}", str(r["visual_tokens"]),
        " ".join(f"L{layer}:{n}" for layer, n in r["kept"].items()) or "-", f"{100 * r['flops_reduction']:.1f}%",
        f"{r['ideal_speedup']:.2f}x", f"{r['measured_speedup']:.2f}x", f"{r['efficiency']:.2f}",
        f"{100 * r['criteria_share']:.2f}", f"{r['prefill_ms']:.1f}", f"{r['decode_ms_per_token']:.1f}",
        f"{r['kv_cache_mb']:.1f}", "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"])


def print_report(results: list[dict], reference_note: str) -> None:
    print(HEADER)
    for result in results:
        print("\n".join(format_row(row) for row in result["rows"]))
    print("vision tower, timed alone (not in the prefills): "
          + ", ".join(f"{r['grid']}x{r['grid']} {r['vision_tower_ms']:.1f} ms" for r in results))
    for ref in (r["reference"] for r in results if "reference" in r):
        print(f"reference: {ref['library']} ({ref['attention']}), same weights, {ref['grid']}x{ref['grid']}: "
              f"prefill {ref['prefill_ms']:.1f} ms, decode {ref['decode_ms_per_token']:.1f} ms/token, peak "
              f"{'-' if ref['peak_mb'] is None else round(ref['peak_mb'])} MB; ours / theirs: prefill {ref['prefill_ours_over_theirs']:.3f}, decode "
              f"{ref['decode_ours_over_theirs']:.3f} (last-token logits differ by {ref['max_logit_diff']:.1e})")
    if reference_note:
        print(f"reference: {reference_note}")
    print(FOOTER)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", choices=list(MODEL_SIZES),
                   help="cpu (default: LLaVA-1.5's 24x24 layout, smaller models), llava-1.5-7b (real sizes, "
                        "for a GPU), tiny (seconds; for the tests)")
    p.add_argument("--grid", default=None, help="comma list of grid sides, e.g. 12,24,48 (default: the preset's); "
                                                "every method runs at the preset's grid, none and feather at the others")
    p.add_argument("--runs", type=cli.positive_int, default=5,
                   help="timed runs of each method after a warm-up (default 5)")
    p.add_argument("--new-tokens", type=cli.positive_int, default=32,
                   help="decode steps timed after each prefill (default 32)")
    p.add_argument("--methods", default=",".join(METHODS[1:]),
                   help=f"comma subset of {','.join(METHODS[1:])} (default: all); none, the baseline, always runs")
    cli.add_device_options(p)
    p.add_argument("--threads", type=cli.at_least(0), default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers reference")


def parse_sides(value: str) -> list[int]:
    """--grid: a comma list of grid sides, each once."""
    try:
        sides = [int(x.strip()) for x in value.split(",")]
    except ValueError:
        sides = []
    if not sides or min(sides) < 1:
        raise ValueError(f"--grid {value!r}: expected a comma list of positive integers")
    return list(dict.fromkeys(sides))


def main(args) -> int:
    own_grid, text, vision = MODEL_SIZES[args.preset]
    grids = parse_sides(args.grid) if args.grid else [own_grid]
    chosen = cli.parse_methods(args.methods, METHODS)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ValueError(f"--json {args.json}: its folder does not exist")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.preset == "llava-1.5-7b" and device.type == "cpu":
        raise ValueError("--preset llava-1.5-7b is LLaVA-1.5-7B's real size (7 B parameters, 28 GB in float32, "
                         "twice that with the transformers reference): run it with --device cuda")
    main_grid = own_grid if own_grid in grids else grids[0]  # where every method, and the reference, runs
    plan = {g: [m for m in METHODS if m == "none" or (m in chosen and (g == main_grid or m in SCALING_METHODS))]
            for g in grids}
    L = text.num_hidden_layers
    schedules = dict(cli.schedules(plan[main_grid], L))  # the main grid runs every method
    for g in grids:  # a schedule the grid cannot hold fails now, not minutes in
        for m in plan[g][1:]:
            try:
                schedules[m].check(L, g * g, (g, g))
            except ValueError as e:
                raise ValueError(f"--grid {g}: {e}") from None
    reference_note = ("skipped (--no-reference)" if args.no_reference else
                      "skipped: transformers is not installed" if transformers_version() is None else "")
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = dict(torch=torch.__version__, transformers=transformers_version(), device=device_name(device),
                   threads=torch.get_num_threads(), cpu_count=os.cpu_count(), dtype=str(dtype).removeprefix("torch."))
    print(f"bench: preset {args.preset} on {machine['device']}, {machine['dtype']}, {machine['threads']} threads, "
          f"{machine['cpu_count']} CPUs, torch {machine['torch']}; median of {args.runs} runs after a warm-up")
    print(f"decoder: d {text.hidden_size}, {L} layers, {text.num_attention_heads} heads, MLP {text.intermediate_size}; "
          f"vision tower: d {vision.hidden_size}, {vision.num_hidden_layers} layers, {vision.patch_size} px patches; "
          f"text tokens: {TEXT_BEFORE} + {TEXT_AFTER}; {args.new_tokens} new tokens")
    for m in plan[main_grid][1:]:
        print(f"  {schedules[m]}")
    results, start = [], time.perf_counter()
    for g in grids:
        reference = g == main_grid and not reference_note
        print(f"timing {g}x{g} ({g * g} visual tokens): {', '.join(plan[g])}{', transformers' if reference else ''}",
              flush=True)
        results.append(bench_grid(args, g, {m: schedules[m] for m in plan[g]}, reference, device, dtype))
    print_report(results, reference_note)
    print(f"bench took {time.perf_counter() - start:.0f} s")
    if args.json:
        settings = dict(preset=args.preset, grids=grids, runs=args.runs, new_tokens=args.new_tokens, seed=args.seed,
                        text_tokens=[TEXT_BEFORE, TEXT_AFTER], text_config=asdict(text), vision_config=asdict(vision),
                        schedules={m: str(schedules[m]) for m in plan[main_grid][1:]}, footer=FOOTER)
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, settings=settings, results=results), f, indent=1)
        print(f"wrote {args.json}")
    return 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "CPU"
