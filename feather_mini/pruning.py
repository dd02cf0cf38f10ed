"""Visual-token pruning: the criteria of "Feather the Throttle" (Endo et al., ICCV 2025),
the schedules that apply them during the prefill, and FastV's FLOPs accounting.

Read in this order:
1. Criteria: pure functions, tensors in, kept indices out (sorted, unique, int64, among the
   visual tokens still present). Ties go to the lower index; nothing is random.
   phi_original (FastV), phi_no_rope (the paper's phi_-R), phi_knn, phi_uniform and
   phi_ensemble (phi_-R + phi_uniform), as in the paper's Table 1.
2. CRITERIA: one row per criterion (its paper symbol, whether it can only be a first stage,
   its stride, how the Pruner calls it); the schedules and the Pruner read only this table.
   A criterion of your own is a function select(inputs: StageInputs, count) -> indices,
   given everything a stage knows; `register_criterion` adds its row (see there).
3. Schedules: a Schedule is a tuple of Stages (layer, criterion, fraction or count kept),
   checked when built. Presets (fastv, fastv_norope, knn, uniform, ensemble, random,
   pyramid_drop, feather) are written for 32 decoder layers and scale to a model's depth;
   they print nothing (the scaling is in the schedule's note).
4. Pruner: what the model asks, once per prefill, which tokens survive each stage.
5. FLOPs: FastV's per-layer count 4nd^2 + 2n^2d + 2ndm and the reduction it implies.

"Pruning at layer K" (layers numbered from 0): layers 0..K-1 see every token, layers K..
see the text tokens and the kept visual tokens. The decision is made from layer K-1's
RMS-normed INPUT through its q and k projections, with the LAST prompt token as the query
(FastV's code, not the "average over all queries" its paper's text suggests). Kept tokens
keep their original position ids. The definitions were read from the authors' code
(markendo/FEATHER at c2a09b2, pkunlp-icler/FastV, Cooperx521/PyramidDrop); where ours
departs from it (tie order, PyramidDrop's scoring layer), the docstring says so.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .model import apply_rope, is_int, repeat_kv, rope_cos_sin

# -----------------------------------------------------------------------------
# Scores and criteria


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, returned sorted ascending; ties go to the lower index
    (a stable sort, where torch.topk leaves tie order unspecified)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def attention_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """How much one query attends to each visual token: (N,) float32, summing to 1.

    query (nh, hs): the last prompt token's q. keys (n_kv, N, hs): the visual tokens' k.
    Per head, softmax over the N visual keys only of q.k / sqrt(hs); then the mean over
    heads. (FastV's own code softmaxes the whole causal row and slices the visual part
    afterwards; the FEATHER authors' code, which produced the paper's numbers, does this.)
    As in the authors' code, the softmax is taken in float32 and cast back to the model's
    dtype before the head mean: in a float16/bfloat16 model that rounding decides which
    tokens sit just above the cut, so skipping it would select different tokens.
    """
    nh, hs = query.shape
    keys = repeat_kv(keys[None], nh // keys.shape[0])[0]  # grouped-query: each k serves nh/n_kv heads
    logits = torch.matmul(query[:, None, :], keys.transpose(1, 2)) / math.sqrt(hs)  # (nh, 1, N)
    return logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype).mean(dim=0)[0].float()


def phi_original(query: torch.Tensor, keys: torch.Tensor, query_position: int, key_positions: torch.Tensor,
                 budget: int, rope_theta: float) -> torch.Tensor:
    """phi_original (FastV): the top `budget` visual tokens by the last prompt token's
    attention, with RoPE applied to q and k at their original positions.

    RoPE's long-term decay lowers q.k with distance, so this favours the visual tokens
    nearest the text that follows the image: the bottom rows.
    """
    hs = query.shape[-1]
    positions = torch.cat([key_positions.new_tensor([query_position]), key_positions])[None]  # (1, 1 + N)
    cos, sin = rope_cos_sin(positions, hs, rope_theta, query.dtype)
    q = apply_rope(query[None, :, None, :], cos[:, :1], sin[:, :1])[0, :, 0]  # (nh, hs)
    k = apply_rope(keys[None], cos[:, 1:], sin[:, 1:])[0]  # (n_kv, N, hs)
    return top_k(attention_scores(q, k), budget)


def phi_no_rope(query: torch.Tensor, keys: torch.Tensor, budget: int) -> torch.Tensor:
    """phi_-R: the same attention score with no RoPE on q or k, so distance to the text no
    longer matters; the top `budget` visual tokens."""
    return top_k(attention_scores(query, keys), budget)


def density_peaks(features: torch.Tensor, neighbours: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak quantities of N feature vectors (N, C): (density, delta), each (N,) float32.

    D = pairwise Euclidean distances / sqrt(C). density_i = exp(-mean of the squared
    distances to its `neighbours` nearest tokens, itself (distance 0) included). delta_i =
    the distance from i to the nearest token of higher density; for the densest token,
    the largest entry of D. Equal densities are ordered by index (the lower index counts
    as higher), where the authors' code adds uniform noise in [0, 1e-6) to break ties.
    """
    N, C = features.shape
    D = torch.cdist(features.float(), features.float()) / C ** 0.5  # (N, N)
    nearest = D.topk(min(neighbours, N), dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    index = torch.arange(N, device=features.device)
    above = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))  # above[i, j]: j is denser than i
    delta = torch.where(above, D, D.max()).min(dim=-1).values
    return density, delta


def phi_knn(features: torch.Tensor, budget: int) -> torch.Tensor:
    """phi_KNN: the `budget` density peaks of the vision backbone's patch features (N, C),
    ranked by density * delta: tokens that sit in a dense region and far from any denser one,
    i.e. one representative per cluster."""
    density, delta = density_peaks(features)
    return top_k(density * delta, budget)


def phi_uniform(rows: int, cols: int, stride: int, device: torch.device | str | None = None) -> torch.Tensor:
    """phi_uniform: every stride-th row and column of the rows x cols grid (raster order),
    starting at row 0 and column 0. 24x24, stride 3: rows 0, 3, ..., 21 and the same columns."""
    r = torch.arange(0, rows, stride, device=device)
    c = torch.arange(0, cols, stride, device=device)
    return (r[:, None] * cols + c[None, :]).flatten()


def uniform_count(rows: int, cols: int, stride: int) -> int:
    """How many tokens phi_uniform keeps: ceil(rows / stride) * ceil(cols / stride)."""
    return -(-rows // stride) * -(-cols // stride)


def stride_for_budget(rows: int, cols: int, budget: int) -> int:
    """The stride whose grid size is nearest `budget` (on a tie, the smaller stride: more tokens).
    27x27 with a budget of 182 gives stride 2 (196 tokens), as in the paper's Table 1."""
    return min(range(1, max(rows, cols) + 1), key=lambda s: (abs(uniform_count(rows, cols, s) - budget), s))


def phi_ensemble(query: torch.Tensor, keys: torch.Tensor, budget: int, rows: int, cols: int,
                 stride: int) -> torch.Tensor:
    """phi_-R + phi_uniform: the top `budget` by phi_-R over ALL visual tokens, united with the
    stride grid. The union's size depends on the image: between max(budget, grid) and
    budget + grid. FEATHER's first stage."""
    grid = phi_uniform(rows, cols, stride, device=query.device)
    return torch.unique(torch.cat([phi_no_rope(query, keys, budget), grid]))


def phi_random(num_visual_tokens: int, budget: int, seed: int = 0) -> torch.Tensor:
    """A control, not one of the paper's criteria: `budget` of the num_visual_tokens tokens drawn
    uniformly without replacement by a generator seeded with `seed`, hence the same subset for
    every image and on every run. A criterion that matters should beat it."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_visual_tokens, generator=generator)[:budget].sort().values


# -----------------------------------------------------------------------------
# The criteria table: everything the schedules and the Pruner need to know about a criterion


@dataclass(frozen=True)
class StageInputs:
    """Everything a criterion may read at one stage of one prefill. Per-token tensors cover the n
    visual tokens still present, in the order of `present`; q and k are before RoPE, from the
    stage's layer K-1 (the layer whose input decides what layers K.. see)."""
    layer: int  # the stage's layer K
    query: torch.Tensor  # (nh, hs): the last prompt token's q
    keys: torch.Tensor  # (n_kv, n, hs): the k of the n visual tokens still present
    query_position: torch.Tensor  # 0-d: the last prompt token's position id (read on the host only if needed)
    key_positions: torch.Tensor  # (n,): the present visual tokens' ORIGINAL position ids
    present: torch.Tensor  # (n,) int64, on the CPU: their original indices 0..N-1 (raster order of the grid)
    hidden: torch.Tensor | None  # (n, d): layer K-1's input hidden states (before its norm); None on a bare decoder
    embeddings: torch.Tensor | None  # (n, d): their projected visual embeddings, the decoder's input for them
    features: torch.Tensor | None  # (N, C): the vision backbone's features of ALL N original visual tokens
    grid_shape: tuple[int, int] | None  # (rows, cols) of the original visual tokens
    stride: int | None  # the stage's (or, from a fraction, the chosen) stride
    seed: int
    rope_theta: float


# How each criterion is called on a stage's inputs s, to keep n tokens (the `select` of its row).
def _original(s: StageInputs, n: int):
    return phi_original(s.query, s.keys, int(s.query_position), s.key_positions, n, s.rope_theta)


def _no_rope(s: StageInputs, n: int):
    return phi_no_rope(s.query, s.keys, n)


def _knn(s: StageInputs, n: int):
    if s.features is None:  # a Pruner on a bare decoder, without a vision tower
        raise ValueError(f"layer {s.layer}: phi_knn needs the vision backbone's features, and none were given")
    return phi_knn(s.features, n)


def _uniform(s: StageInputs, n: int):
    return phi_uniform(*s.grid_shape, s.stride, s.query.device)


def _ensemble(s: StageInputs, n: int):
    return phi_ensemble(s.query, s.keys, n, *s.grid_shape, s.stride)


def _random(s: StageInputs, n: int):
    return phi_random(s.keys.shape[1], n, s.seed)


REQUIRED, OR_FRACTION = "required", "or fraction"  # Criterion.stride: a stride must be given / or a fraction instead


@dataclass(frozen=True)
class Criterion:
    """One row of CRITERIA. select(inputs, count) -> kept indices among the n present visual tokens."""
    symbol: str  # the paper's name, as a stage prints it
    select: Callable[[StageInputs, int], torch.Tensor] | None
    first_stage_only: bool = False  # defined on the original N tokens (the full grid, the vision features)
    stride: str | None = None  # None: takes no stride; REQUIRED; OR_FRACTION: a stride or a size, exactly one
    unites_grid: bool = False  # its kept set is a union with the stride grid (the size depends on the image)
    describe: str = "top {share} by {symbol}"  # how a stage prints; {share}: "25% of original" or "36"
    seeded: bool = False  # draws at random with the stage's seed
    own: bool = False  # someone's own (registered or a function): its indices are checked and sorted on every call


CRITERIA = {
    "phi_original": Criterion("phi_original", _original),
    "phi_no_rope": Criterion("phi_-R", _no_rope),
    "phi_knn": Criterion("phi_KNN", _knn, first_stage_only=True),
    "phi_uniform": Criterion("phi_uniform", _uniform, first_stage_only=True, stride=OR_FRACTION,
                             describe="stride-{stride} grid"),  # given a fraction: "the grid nearest {share}"
    "phi_ensemble": Criterion("phi_-R+uniform", _ensemble, first_stage_only=True, stride=REQUIRED, unites_grid=True,
                              describe="top {share} by phi_-R + stride-{stride} grid"),
    "phi_random": Criterion("random", _random, seeded=True, describe="a random {share} (seed {seed})"),  # the control
}


BUILT_IN = frozenset(CRITERIA)


def register_criterion(name: str, select: Callable[[StageInputs, int], torch.Tensor], symbol: str | None = None) -> None:
    """Make `name` a criterion any Stage can use, at any stage: select(inputs, count) gets the
    stage's StageInputs and returns `count` distinct indices among the inputs.present tokens (a
    1-d int64 tensor, in any order: the Pruner sorts them, and names the criterion if they are
    wrong). `symbol`: how a stage prints it (default: the name). Registering a name again
    replaces it; the paper's criteria cannot be replaced."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a criterion's name must be a non-empty string, got {name!r}")
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in criterion; register yours under another name")
    if not callable(select):
        raise TypeError(f"criterion {name!r}: select must be a function select(inputs, count), got {select!r}")
    CRITERIA[name] = Criterion(symbol or name, select, own=True)


def criterion_name(criterion) -> str:
    """A stage's criterion as text: its name, or a function's __name__."""
    return criterion if isinstance(criterion, str) else getattr(criterion, "__name__", repr(criterion))


def criterion_row(criterion) -> Criterion:
    """The table row of a criterion name. A function in a Stage is used as registered criteria are,
    select(inputs, count), without a name in the table; an unknown name gets a row that only prints."""
    name = criterion_name(criterion)
    if callable(criterion):
        return Criterion(name, criterion, own=True)
    return CRITERIA.get(name) or Criterion(name, None)


# -----------------------------------------------------------------------------
# Schedules: plain data, checked when built


@dataclass(frozen=True)
class Stage:
    """Prune before decoder layer `layer`: keep the visual tokens `criterion` ranks highest.

    criterion: a name from CRITERIA (the paper's, or one given to register_criterion), or a
    function select(inputs: StageInputs, count) -> the kept indices among the visual tokens
    still present, `count` of them in any order (the Pruner checks them and names the function).
    fraction: the share of visual tokens kept (count = floor(fraction * base)), where base
    is the ORIGINAL number N (of_present=False) or the number still present (True).
    count: how many visual tokens to keep, exactly; give a fraction or a count, not both.
    stride: the grid of phi_uniform and phi_ensemble. phi_uniform takes either a stride
    or a size (fraction or count), which picks the stride whose grid is nearest that size.
    seed: phi_random's generator (the control); an evaluation gives each image its own.
    """
    layer: int
    criterion: str | Callable[[StageInputs, int], torch.Tensor]
    fraction: float | None = None
    of_present: bool = False
    stride: int | None = None
    seed: int = 0
    count: int | None = None

    def __str__(self) -> str:
        row = criterion_row(self.criterion)
        share = (f"{100 * self.fraction:g}% of {'present' if self.of_present else 'original'}" if self.fraction
                 else f"{self.count}" if self.count else "")
        what = "the grid nearest {share}" if row.stride == OR_FRACTION and self.stride is None else row.describe
        return f"layer {self.layer}: " + what.format(share=share, symbol=row.symbol, stride=self.stride, seed=self.seed)


@dataclass(frozen=True)
class Schedule:
    """Stages in increasing layer order; `name` and `note` only label it when printed. `depth`: the
    decoder depth its layer numbers are written for (a preset's num_layers), so that a preset built
    for 32 layers is refused by an 8-layer model rather than applied unscaled; None: any depth."""
    stages: tuple[Stage, ...]
    name: str = "custom"
    note: str = ""
    depth: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError(f"schedule {self.name!r} has no stages (for no pruning, pass no schedule)")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise TypeError(f"schedule {self.name!r}, stage {i + 1}: expected a Stage, got {stage!r}")
            _check_stage(stage, f"schedule {self.name!r}, stage {i + 1} (layer {stage.layer}, "
                                f"{criterion_name(stage.criterion)})", self.stages[i - 1] if i else None)

    def __str__(self) -> str:
        note = f" [{self.note}]" if self.note else ""
        return f"{self.name}{note}: " + "; ".join(str(s) for s in self.stages)

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.stages]

    def check(self, num_layers: int, num_visual_tokens: int,
              grid_shape: tuple[int, int] | None) -> dict[int, tuple[int, int]]:
        """Check the schedule against a model (depth, N visual tokens, their grid) before any compute.

        Returns, per stage layer, the (fewest, most) visual tokens that survive it: the two
        differ only after a criterion that unites with the grid (phi_ensemble), whose union
        depends on the image.
        """
        if self.depth is not None and self.depth != num_layers:
            raise ValueError(f"schedule {self.name!r} is numbered for {self.depth} decoder layers, but the model "
                             f"has {num_layers}: build it with num_layers={num_layers}")
        lo = hi = num_visual_tokens  # the fewest and most visual tokens present before this stage
        bounds = {}
        for i, stage in enumerate(self.stages):
            row = criterion_row(stage.criterion)
            where = f"schedule {self.name!r}, stage {i + 1} (layer {stage.layer}, {criterion_name(stage.criterion)})"
            if stage.layer >= num_layers:
                raise ValueError(f"{where}: layer {stage.layer} is not below the model's depth of {num_layers} layers")
            if row.stride and (grid_shape is None or grid_shape[0] * grid_shape[1] != num_visual_tokens):
                raise ValueError(f"{where}: the grid {grid_shape} does not hold the model's {num_visual_tokens} "
                                 "visual tokens, so a uniform grid cannot be laid over them")
            count_lo = stage_count(stage, num_visual_tokens, lo, grid_shape)
            count_hi = stage_count(stage, num_visual_tokens, hi, grid_shape)
            if not stage.of_present and count_lo > lo:
                raise ValueError(f"{where}: keeps {count_lo} visual tokens but as few as {lo} are present")
            if count_lo < 1:
                raise ValueError(f"{where}: keeps 0 of the {lo} visual tokens present; raise fraction")
            lo, hi = count_lo, count_hi
            if row.unites_grid:  # the grid adds between 0 and all of its tokens
                g = uniform_count(*grid_shape, stage.stride)
                lo, hi = max(lo, g), min(hi + g, num_visual_tokens)
            bounds[stage.layer] = (lo, hi)
        return bounds

    def pruner(self, num_visual_tokens: int, grid_shape: tuple[int, int] | None, visual_start: int,
               rope_theta: float, features: torch.Tensor | None = None, clock=None,
               embeddings: torch.Tensor | None = None) -> Pruner:
        """A Pruner for one prefill (see Pruner), for a model this schedule has passed `check` against
        (the model checks first, so that a bad schedule fails before any compute)."""
        return Pruner(self, num_visual_tokens, grid_shape, visual_start, rope_theta, features, clock, embeddings)


def _check_stage(stage: Stage, where: str, previous: Stage | None) -> None:
    """One stage's own values, read against its criterion's row of CRITERIA."""
    if not callable(stage.criterion) and stage.criterion not in CRITERIA:
        raise ValueError(f"{where}: unknown criterion {stage.criterion!r}; expected one of {list(CRITERIA)} "
                         "(pruning.register_criterion adds one) or a function select(inputs, count)")
    row = criterion_row(stage.criterion)
    name = criterion_name(stage.criterion)
    if not is_int(stage.layer) or stage.layer < 1:
        raise ValueError(f"{where}: layer {stage.layer!r} must be an int >= 1 (the score comes from layer - 1)")
    if previous is not None and stage.layer <= previous.layer:
        raise ValueError(f"{where}: layer {stage.layer} must come after the previous stage's layer "
                         f"{previous.layer} (stages in increasing layer order)")
    if stage.stride is not None and (not is_int(stage.stride) or stage.stride < 1):
        raise ValueError(f"{where}: stride {stage.stride!r} must be an int >= 1")
    if not isinstance(stage.of_present, bool):
        raise ValueError(f"{where}: of_present={stage.of_present!r} must be True or False")
    if not is_int(stage.seed) or stage.seed < 0:
        raise ValueError(f"{where}: seed={stage.seed!r} must be an int >= 0 (phi_random's generator)")
    if row.stride == REQUIRED and stage.stride is None:
        raise ValueError(f"{where}: {name} needs a stride for its grid")
    if stage.stride is not None and row.stride is None:
        with_stride = " and ".join(n for n, r in CRITERIA.items() if r.stride)
        raise ValueError(f"{where}: stride={stage.stride} only applies to {with_stride}")
    if stage.of_present and row.first_stage_only:
        raise ValueError(f"{where}: of_present does not apply: {name} is a first stage, "
                         "where every visual token is present")
    if stage.count is not None and (not is_int(stage.count) or stage.count < 1):
        raise ValueError(f"{where}: count={stage.count!r} must be an int >= 1 (visual tokens kept)")
    if stage.count is not None and stage.fraction is not None:
        raise ValueError(f"{where}: give a fraction or a count of visual tokens kept, not both")
    if stage.count is not None and stage.of_present:
        raise ValueError(f"{where}: of_present applies to a fraction; a count is a number of tokens")
    sized = stage.fraction is not None or stage.count is not None
    if row.stride == OR_FRACTION and (stage.stride is None) == (not sized):
        raise ValueError(f"{where}: {name} takes a stride or a size (a fraction or a count), exactly one; "
                         f"got stride={stage.stride!r}, fraction={stage.fraction!r}, count={stage.count!r}")
    if not sized and row.stride != OR_FRACTION:
        raise ValueError(f"{where}: fraction (the share of visual tokens kept) or count is required")
    if stage.fraction is not None and (isinstance(stage.fraction, bool) or not isinstance(stage.fraction, (int, float))
                                       or not 0 < stage.fraction <= 1):
        raise ValueError(f"{where}: fraction={stage.fraction!r} must be a share in (0, 1] of the visual "
                         f"tokens {'present' if stage.of_present else 'in the original grid'}")
    if previous is not None and row.first_stage_only:
        needs = "the full grid" if row.stride else "the vision backbone's features"  # a stride lays a grid
        raise ValueError(f"{where}: {name} needs {needs}, which exist only for the "
                         f"original visual tokens; it can only be the first stage")


def stage_count(stage: Stage, num_visual_tokens: int, present: int, grid_shape: tuple[int, int] | None) -> int:
    """Visual tokens a stage keeps by its criterion (for phi_ensemble: its phi_-R part, before the union)."""
    if criterion_row(stage.criterion).stride == OR_FRACTION:
        return uniform_count(*grid_shape, stage_stride(stage, num_visual_tokens, grid_shape))
    if stage.count is not None:
        return stage.count
    return int((present if stage.of_present else num_visual_tokens) * stage.fraction)


def stage_stride(stage: Stage, num_visual_tokens: int, grid_shape: tuple[int, int] | None) -> int | None:
    """The stage's stride, or the one its size picks (phi_uniform); None for a criterion without a grid."""
    if stage.stride is not None or criterion_row(stage.criterion).stride != OR_FRACTION:
        return stage.stride
    size = stage.count if stage.count is not None else int(num_visual_tokens * stage.fraction)
    return stride_for_budget(*grid_shape, size)


def reseeded(schedule: Schedule | None, seed: int) -> Schedule | None:
    """The schedule with every seeded stage (the random control) drawing with `seed`: an evaluation
    gives each question its own, so that the control's average over a split is unbiased."""
    if schedule is None or not any(criterion_row(s.criterion).seeded for s in schedule.stages):
        return schedule
    return replace(schedule, stages=tuple(replace(s, seed=seed) if criterion_row(s.criterion).seeded else s
                                          for s in schedule.stages))

# -----------------------------------------------------------------------------
# Presets: written for 32 layers (LLaVA-1.5-7B), scaled to a model's depth

PRESET_DEPTH = 32


def scale_layer(layer: int, num_layers: int) -> int:
    """A 32-layer index mapped to a num_layers-deep model: layer * L / 32, rounded half up, at least 1."""
    return max(1, math.floor(layer * num_layers / PRESET_DEPTH + 0.5))


def _preset(name: str, stages: list[Stage], num_layers: int) -> Schedule:
    """The schedule, its layers scaled to num_layers; the scaling is in its note (it prints with it)."""
    if not is_int(num_layers) or num_layers < 1:
        raise ValueError(f"{name}: num_layers={num_layers!r} must be the model's decoder depth, an int >= 1")
    for stage in stages:  # checked as written, before scaling: -5 would otherwise round up to layer 1
        if not is_int(stage.layer) or stage.layer < 1:
            raise ValueError(f"{name}: layer={stage.layer!r} must be an int >= 1, in the presets' numbering of "
                             f"{PRESET_DEPTH} layers (num_layers scales it)")
    if num_layers == PRESET_DEPTH:
        return Schedule(tuple(stages), name, depth=num_layers)
    written = ",".join(str(s.layer) for s in stages)
    scaled = [replace(s, layer=scale_layer(s.layer, num_layers)) for s in stages]
    layers = ",".join(str(s.layer) for s in scaled)
    if len({s.layer for s in scaled}) < len(scaled):
        raise ValueError(f"{name}: layers {written} of {PRESET_DEPTH} scale to {layers} of {num_layers}, "
                         "which collide: the model is too shallow for this preset")
    note = f"layers {written} of {PRESET_DEPTH} scaled to {layers} of {num_layers} (x L/32, rounded)"
    return Schedule(tuple(scaled), name, note, depth=num_layers)

# The one-stage presets take K in the 32-layer numbering of the paper (Table 1: K = 3 and 8);
# num_layers scales it, like every preset layer, to the model's depth.


def fastv(layer: int = 3, num_layers: int = 32) -> Schedule:
    """FastV as the paper evaluates it: at layer K = 3 keep the top 25% by phi_original (prune 75%)."""
    return _preset("fastv", [Stage(layer, "phi_original", 0.25)], num_layers)


def fastv_norope(layer: int = 3, num_layers: int = 32) -> Schedule:
    """FastV without RoPE: the top 25% by phi_-R at layer K."""
    return _preset("fastv_norope", [Stage(layer, "phi_no_rope", 0.25)], num_layers)


def knn(layer: int = 3, num_layers: int = 32) -> Schedule:
    """The top 25% density peaks of the vision features (phi_KNN) at layer K."""
    return _preset("knn", [Stage(layer, "phi_knn", 0.25)], num_layers)


def uniform(layer: int = 3, num_layers: int = 32) -> Schedule:
    """The grid nearest 25% of the tokens at layer K (Table 1: stride 2, 196 of 729)."""
    return _preset("uniform", [Stage(layer, "phi_uniform", fraction=0.25)], num_layers)


def ensemble(layer: int = 3, num_layers: int = 32) -> Schedule:
    """The top 25% by phi_-R united with the stride-3 grid at layer K."""
    return _preset("ensemble", [Stage(layer, "phi_ensemble", 0.25, stride=3)], num_layers)


def random_subset(layer: int = 3, num_layers: int = 32, seed: int = 0) -> Schedule:
    """The control: a seeded random 25% of the visual tokens at layer K (phi_random)."""
    return _preset("random", [Stage(layer, "phi_random", 0.25, seed=seed)], num_layers)


def pyramid_drop(num_layers: int = 32) -> Schedule:
    """PyramidDrop for LLaVA-1.5: layers 8, 16, 24 keep 50%, 25%, 12.5% of the ORIGINAL tokens
    by phi_original. Its own code differs in three details (it scores with layer K's norm and
    q/k, softmaxes the whole causal row, and renumbers kept positions 0..n-1); this preset
    uses the convention above so that every method is compared on one mechanism."""
    stages = [Stage(8, "phi_original", 0.5), Stage(16, "phi_original", 0.25), Stage(24, "phi_original", 0.125)]
    return _preset("pyramid_drop", stages, num_layers)


def feather(num_layers: int = 32) -> Schedule:
    """FEATHER (authors' script: fastv_k [8, 16], ratio 0.7, "no_rope_s=3"): at layer 8 the
    top 30% by phi_-R united with the stride-3 grid; at layer 16 the top 9% of the tokens
    still present by phi_-R (grid tokens not protected)."""
    stages = [Stage(8, "phi_ensemble", 0.3, stride=3), Stage(16, "phi_no_rope", 0.09, of_present=True)]
    return _preset("feather", stages, num_layers)


PRESETS = {"fastv": fastv, "fastv_norope": fastv_norope, "knn": knn, "uniform": uniform, "ensemble": ensemble,
           "random": random_subset, "pyramid_drop": pyramid_drop, "feather": feather}


# -----------------------------------------------------------------------------
# Pruner: one prefill's state


class Pruner:
    """Asked by the decoder loop, once per stage, which rows of the sequence survive.

    Built for one prefill, with what its criteria may need: the vision backbone's `features`
    (N, C) of this image (phi_KNN's input) and the projector's output, `embeddings` (N, d)
    (both None on a bare decoder), and the visual span, which starts at `visual_start` and
    stays contiguous; text tokens are never dropped. Tracks
    `present`, the original indices (0..N-1) of the visual tokens still in the sequence, and
    records `kept[layer]` after each stage.
    clock: a function returning seconds (the benchmark's, which waits for the GPU); given, the
    time spent choosing tokens adds up in `seconds`.
    """

    def __init__(self, schedule: Schedule, num_visual_tokens: int, grid_shape: tuple[int, int] | None,
                 visual_start: int, rope_theta: float, features: torch.Tensor | None = None,
                 clock: Callable[[], float] | None = None, embeddings: torch.Tensor | None = None):
        self.num_visual_tokens, self.grid_shape, self.visual_start = num_visual_tokens, grid_shape, visual_start
        self.rope_theta, self.features, self.clock, self.embeddings = rope_theta, features, clock, embeddings
        self.stages = {s.layer: s for s in schedule.stages}
        self.layers = set(self.stages)  # the decoder loop asks before every layer
        self.present = torch.arange(num_visual_tokens)
        self.kept: dict[int, torch.Tensor] = {}
        self.seconds = 0.0

    def select(self, layer: int, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Rows (T',) of the current sequence that layer `layer` and later ones will see.

        q (1, nh, T, hs), k (1, n_kv, T, hs): layer `layer`-1's projections of its normed
        input, before RoPE, over the whole sequence as the authors' code computes them (one
        row alone would go through a different matmul kernel and could differ in the last
        bit, which can swap near-tied tokens). positions (1, T): original position ids.
        hidden (1, T, d): layer `layer`-1's input, for criteria of one's own.
        """
        start_time = self.clock() if self.clock else 0.0
        n, start, T = len(self.present), self.visual_start, q.shape[2]
        stage = self.stages[layer]
        visual = slice(start, start + n)
        embeddings = None if self.embeddings is None else self.embeddings[self.present.to(self.embeddings.device)]
        inputs = StageInputs(layer, q[0, :, -1], k[0, :, visual], positions[0, -1], positions[0, visual], self.present,
                             None if hidden is None else hidden[0, visual], embeddings, self.features, self.grid_shape,
                             stage_stride(stage, self.num_visual_tokens, self.grid_shape), stage.seed, self.rope_theta)
        count = stage_count(stage, self.num_visual_tokens, n, self.grid_shape)
        row = criterion_row(stage.criterion)
        idx = row.select(inputs, count)
        if row.own:  # built-in criteria are tested; one's own is checked on every call
            idx = checked_indices(stage, idx, n, count)
        idx = idx.to(q.device)
        self.present = self.present[idx.cpu()]
        self.kept[layer] = self.present
        rows = torch.cat([torch.arange(start, device=q.device), start + idx,
                          torch.arange(start + n, T, device=q.device)])
        if self.clock:
            self.seconds += self.clock() - start_time
        return rows


def checked_indices(stage: Stage, kept, present: int, count: int) -> torch.Tensor:
    """What a criterion of one's own returned, checked and sorted: the decoder gathers rows by it,
    so a wrong index would silently keep the wrong tokens."""
    where = f"layer {stage.layer}: criterion {criterion_name(stage.criterion)}"
    if not torch.is_tensor(kept) or kept.dtype != torch.int64 or kept.ndim != 1:
        what = f"{kept.dtype} tensor of shape {tuple(kept.shape)}" if torch.is_tensor(kept) else type(kept).__name__
        raise ValueError(f"{where} returned a {what}; expected a 1-d int64 tensor of kept indices")
    if len(kept) != count:
        raise ValueError(f"{where} returned {len(kept)} indices; the stage keeps exactly {count}")
    kept = kept.sort().values
    outside = kept[(kept < 0) | (kept >= present)]
    if len(outside):
        raise ValueError(f"{where} returned index {outside[0].item()}, outside the {present} visual tokens "
                         f"present (0..{present - 1})")
    repeated = kept[1:][kept.diff() == 0]
    if len(repeated):
        raise ValueError(f"{where} returned index {repeated[0].item()} more than once")
    return kept


# -----------------------------------------------------------------------------
# FLOPs: FastV's accounting, the paper's "FLOPs Red" column


def layer_flops(n: int, hidden: int, mlp: int) -> int:
    """One decoder layer over n tokens: 4nd^2 (q, k, v, o) + 2n^2d (scores, weighted sum) +
    2ndm (MLP). FastV's formula: it counts Llama's three-matrix SwiGLU MLP as two matrices."""
    return 4 * n * hidden ** 2 + 2 * n ** 2 * hidden + 2 * n * hidden * mlp


def prefill_flops(kept, num_visual_tokens: int, num_text: int, num_layers: int = 32, hidden: int = 4096,
                  mlp: int = 11008) -> int:
    """Decoder prefill FLOPs (defaults: LLaVA-1.5-7B's decoder) when some visual tokens are dropped.

    kept: what survives each stage, as a run's `kept` ({layer: indices}), {layer: count}, or a
    Schedule (its counts for a square grid of num_visual_tokens; after phi_ensemble, whose union
    depends on the image, the largest possible union). None or {}: no pruning. Layer l sees
    the visual tokens of the last stage at or before l. The vision tower, projector, lm_head
    and the scores are not counted, as in FastV.
    """
    if isinstance(kept, Schedule):
        side = math.isqrt(num_visual_tokens)
        grid_shape = (side, side) if side * side == num_visual_tokens else None
        kept = {layer: most for layer, (_, most) in kept.check(num_layers, num_visual_tokens, grid_shape).items()}
    counts = {layer: len(v) if isinstance(v, (list, tuple)) or (torch.is_tensor(v) and v.ndim) else int(v)
              for layer, v in (kept or {}).items()}
    total, visual = 0, num_visual_tokens
    for layer in range(num_layers):
        visual = counts.get(layer, visual)
        total += layer_flops(num_text + visual, hidden, mlp)
    return total


def flops_reduction(kept, num_visual_tokens: int, num_text: int, num_layers: int = 32, hidden: int = 4096,
                    mlp: int = 11008) -> float:
    """1 - pruned / unpruned prefill FLOPs, the paper's "FLOPs Red" column; `kept` as in prefill_flops.
    LLaVA-7B sizes, 729 visual and 10 text tokens: fastv at K=3 gives 0.677, at K=8 0.561."""
    sizes = (num_visual_tokens, num_text, num_layers, hidden, mlp)
    return 1 - prefill_flops(kept, *sizes) / prefill_flops(None, *sizes)


def flops_reduction_of(config, kept, num_visual_tokens: int, prompt_length: int) -> float:
    """flops_reduction for one prompt of `prompt_length` tokens on a model of `config` (a LlavaConfig)."""
    text = config.text_config
    return flops_reduction(kept, num_visual_tokens, prompt_length - num_visual_tokens, text.num_hidden_layers,
                           text.hidden_size, text.intermediate_size)
