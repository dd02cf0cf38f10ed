"""What the commands (demo, eval, heatmap, bench, train) share: option types, the --weights,
--device and --dtype options, the method names, the preset builder, the progress line, the
--out picture and the clock their timings read.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

import torch

from . import pruning
from .checkpoint import SHIPPED_WEIGHTS, cache_dir

METHODS = ("none",) + tuple(pruning.PRESETS)  # every method a command accepts, in the eval table's order
HEADLINE = ("fastv", "fastv_norope", "pyramid_drop", "feather")  # what demo, heatmap and bench show by default
DEFAULT_METHODS = ("none",) + HEADLINE  # demo's and bench's: the headline methods and the unpruned baseline
ONE_STAGE = tuple(name for name, preset in pruning.PRESETS.items()  # the presets that take a layer K
                  if "layer" in inspect.signature(preset).parameters)
EARLY_K, LATER_K = 3, 8  # Table 1's two layers, in the presets' 32-layer numbering

# -----------------------------------------------------------------------------
# Option types and options


def at_least(minimum: int):
    """An argparse type: an int >= minimum (argparse names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


positive_int = at_least(1)


def add_weights_option(p: argparse.ArgumentParser, default: Path = SHIPPED_WEIGHTS) -> None:
    p.add_argument("--weights", default=str(default),
                   help=f"checkpoint folder or model name: feather-tiny, feather-576, feather-smol (after `fetch "
                        f"feather-smol`; default: {default.name}), or a llava-1.5-7b-hf download")


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--dtype", default=None,
                   help="float32, float16 or bfloat16 (default: float32 on CPU, float16 on GPUs)")


def parse_methods(text: str, choices: tuple[str, ...] = METHODS) -> list[str]:
    """--methods: a comma-separated subset of `choices`, in the order given, each once."""
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in choices]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown method {unknown[0] if unknown else '(none given)'!r}; "
                         f"expected a comma-separated subset of {', '.join(choices)}")
    return methods

# -----------------------------------------------------------------------------
# Methods -> schedules


def schedules(methods: list[str], num_layers: int,
              both_layers: bool = False) -> list[tuple[str, pruning.Schedule | None]]:
    """(method, schedule) in the order given: "none" -> None (no pruning), each preset scaled to
    num_layers. both_layers: each one-stage preset twice, at the early and the later K (eval's
    Table 1); otherwise every preset at its default layers."""
    rows = []
    for method in methods:
        if method == "none":
            rows.append((method, None))
        elif both_layers and method in ONE_STAGE:
            rows += [(method, pruning.PRESETS[method](layer=k, num_layers=num_layers)) for k in (EARLY_K, LATER_K)]
        else:
            rows.append((method, pruning.PRESETS[method](num_layers=num_layers)))
    return rows

# -----------------------------------------------------------------------------
# Progress, pictures, time


def progress_line(prefix: str, n: int, of: int, label: str, total: int):
    """A callback done -> one progress line on stderr for the n-th of `of` runs over `total` items
    ("eval: row 3/15 fastv (layers 2): 40/400"): redrawn in place on a terminal, printed once (when
    done) into a log file."""
    def progress(done: int) -> None:
        if done == total or sys.stderr.isatty():
            print(f"\r{prefix} {n}/{of} {label}: {done}/{total}", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)
    return progress


def output_path(text: str | None, default_name: str) -> Path:
    """--out, checked before anything runs, so that a bad path does not waste the run. Without one,
    `default_name` in the cache folder (checkpoint.cache_dir): never a stray file in a checkout."""
    out = Path(text) if text is not None else cache_dir() / default_name
    if text is None:
        out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {text!r}")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder; name a .png file")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out: {out} cannot be written (permission denied)")
    return out


def save_picture(picture, out: Path) -> None:
    """Write the PNG after the results are printed, so that a full disk does not throw them away."""
    try:
        picture.save(out)
    except OSError as e:
        raise OSError(f"--out: could not write {out} ({e.strerror or e})") from None


def now(device: torch.device) -> float:
    """Seconds, once the device's queued work is done (GPU work is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()
