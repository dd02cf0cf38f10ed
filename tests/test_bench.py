# python -m pytest tests/test_bench.py -q
"""`python -m feather_mini bench` end to end on the tiny preset: the table it prints and the JSON
it writes. No timing is asserted; token counts, FLOPs and cache sizes are checked on paper."""
import contextlib
import io
import json

import pytest
import torch

from feather_mini import bench, cli
from feather_mini.__main__ import main

ROW_FIELDS = {"method", "grid", "visual_tokens", "text_tokens", "kept", "flops_reduction", "ideal_speedup",
              "measured_speedup", "efficiency", "criteria_ms", "criteria_share",
              "prefill_ms", "decode_ms_per_token", "kv_cache_mb", "peak_mb"}
REFERENCE_FIELDS = {"library", "attention", "grid", "prefill_ms", "decode_ms_per_token", "peak_mb",
                    "prefill_ours_over_theirs", "decode_ours_over_theirs", "max_logit_diff"}


def run_bench(*options: str) -> tuple[int, str]:
    """The command in this process, on one thread (the tiny model's ops are too small to split, and
    on a busy machine two threads wait on each other); the thread count is restored afterwards."""
    out, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            code = main(["bench", "--preset", "tiny", "--runs", "1", "--new-tokens", "2", "--threads", "1", *options])
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run at 8x8 and 12x12 (the tiny preset's own grid): (printed text, JSON)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code, text = run_bench("--grid", "8,12", "--json", str(path))
    assert code == 0
    return text, json.loads(path.read_text())


def rows_of(report: dict, grid: int) -> dict:
    [result] = [r for r in report["results"] if r["grid"] == grid]
    return {row["method"]: row for row in result["rows"]}


def test_json_has_every_field(tiny_run):
    """Machine, settings, one row per method and grid with every column, the vision tower, the reference."""
    _, report = tiny_run
    assert {"torch", "transformers", "device", "threads", "cpu_count", "dtype"} <= set(report["machine"])
    assert {"preset", "grids", "runs", "new_tokens", "text_config", "vision_config"} <= set(report["settings"])
    for result in report["results"]:
        assert result["vision_tower_ms"] > 0
        for row in result["rows"]:
            assert set(row) == ROW_FIELDS, row["method"]
    assert set(report["results"][1]["reference"]) == REFERENCE_FIELDS


def test_every_method_at_the_presets_grid_none_and_feather_elsewhere(tiny_run):
    """--grid 8,12: the scaling grid 8 runs only the baseline and feather; the reference runs at 12."""
    _, report = tiny_run
    assert list(rows_of(report, 8)) == ["none", "feather"]
    assert list(rows_of(report, 12)) == ["none", "fastv", "fastv_norope", "pyramid_drop", "feather"]
    assert "reference" not in report["results"][0]


def test_counts_on_paper(tiny_run):
    """12x12 = 144 visual + 40 text tokens, 4 layers of width 64: kept counts, FLOPs, KV bytes."""
    _, report = tiny_run
    rows = rows_of(report, 12)
    assert rows["fastv"]["kept"] == {"1": 36}  # 25% of 144 before layer 3 * 4/32 -> 1
    assert rows["pyramid_drop"]["kept"] == {"1": 72, "2": 36, "3": 18}
    assert rows["none"]["kept"] == {} and rows["none"]["flops_reduction"] == 0 and rows["none"]["ideal_speedup"] == 1
    # Per layer 4nd^2 + 2n^2d + 2ndm with d 64, m 128: n = 184 gives 10362880, n = 40 + 36 = 76 gives 3229696.
    unpruned, pruned = 4 * 10362880, 10362880 + 3 * 3229696
    assert (unpruned, pruned) == (41451520, 20051968)
    assert rows["fastv"]["flops_reduction"] == pytest.approx(1 - pruned / unpruned)  # 0.516
    assert rows["fastv"]["ideal_speedup"] == pytest.approx(unpruned / pruned)  # 2.07
    # K and V, 64 floats each per token and layer: layer 0 holds 184 tokens, layers 1-3 the 40 text + 36 kept.
    assert rows["none"]["kv_cache_mb"] * 2 ** 20 == 4 * 184 * 2 * 64 * 4
    assert rows["fastv"]["kv_cache_mb"] * 2 ** 20 == (184 + 3 * 76) * 2 * 64 * 4
    assert rows["pyramid_drop"]["kv_cache_mb"] * 2 ** 20 == (184 + 112 + 76 + 58) * 2 * 64 * 4  # 220160 bytes
    assert rows["none"]["criteria_share"] == 0 and all(rows[m]["criteria_share"] > 0 for m in rows if m != "none")
    for row in rows.values():
        assert row["efficiency"] == pytest.approx(row["measured_speedup"] / row["ideal_speedup"])
        assert row["peak_mb"] > 0 and row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0


def test_reference_runs_the_same_weights(tiny_run):
    """transformers, loaded with our tensors, gives the unpruned prefill's last-token logits."""
    _, report = tiny_run
    reference = report["results"][1]["reference"]
    assert reference["max_logit_diff"] <= 1e-4, f"last-token logits differ by {reference['max_logit_diff']:.2e}"
    assert reference["prefill_ours_over_theirs"] > 0 and reference["decode_ours_over_theirs"] > 0


def test_table_is_printed(tiny_run):
    """A header, one line per row, the vision tower's times, the reference line and the footer."""
    text, report = tiny_run
    lines = text.splitlines()
    header = lines.index(bench.HEADER)
    assert [line.split()[:2] for line in lines[header + 1:header + 8]] == [
        ["none", "8x8"], ["feather", "8x8"], ["none", "12x12"], ["fastv", "12x12"], ["fastv_norope", "12x12"],
        ["pyramid_drop", "12x12"], ["feather", "12x12"]]
    assert lines[header + 8].startswith("vision tower, timed alone (not in the prefills): 8x8 ")
    assert lines[header + 9].startswith("reference: transformers ")
    assert "FLOPs red.: FastV's count" in text


def test_no_reference_says_so():
    """--no-reference: one line says the reference was skipped; --methods fastv: its row and the baseline's."""
    code, text = run_bench("--methods", "fastv", "--no-reference")
    assert code == 0
    assert "reference: skipped (--no-reference)" in text
    lines = text.splitlines()
    table = lines[lines.index(bench.HEADER) + 1:]
    assert [line.split()[0] for line in table if line.split()[1:2] == ["12x12"]] == ["none", "fastv"]


@pytest.mark.parametrize("options, message", [
    (["--grid", "12,x"], "--grid '12,x': expected a comma list of positive integers"),
    (["--grid", "0"], "--grid '0': expected a comma list of positive integers"),
    (["--methods", "fastv,fast"], "--methods: unknown method 'fast'; expected a comma-separated subset of"),
    (["--runs", "0"], "argument --runs: must be at least 1, got 0"),
    (["--threads", "-1"], "argument --threads: must be at least 0, got -1"),
    (["--grid", "2"], "--grid 2: schedule 'pyramid_drop'"),  # 4 visual tokens cannot be pruned three times
    (["--json", "no/such/folder/bench.json"], "--json no/such/folder/bench.json: its folder does not exist"),
    (["--preset", "llava-1.5-7b"], "--preset llava-1.5-7b is LLaVA-1.5-7B's real size"),
])
def test_bad_options_are_one_line_errors(options, message, capsys):
    """A bad value is exit code 2 and one line naming the option, before any model is built."""
    code, _ = run_bench(*options)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("feather-mini bench: error: ") and message in err and err.count("\n") == 1


def test_timing_the_criteria_keeps_what_the_schedule_keeps():
    """A prefill given a clock (the benchmark's timing hook) keeps the same tokens and logits, and adds up
    the time its two stages took choosing them; without one, pruning_seconds stays 0."""
    config = bench.llava_config("tiny", 12, new_tokens=1)
    model, inputs = bench.random_model(config, torch.device("cpu"), torch.float32, 0), bench.random_inputs(config, 0)
    [(_, schedule)] = cli.schedules(["feather"], config.text_config.num_hidden_layers)
    ticks = iter(range(100))
    with torch.inference_mode():
        plain, timed = model(inputs, schedule=schedule), model(inputs, schedule=schedule, clock=lambda: next(ticks))
    assert {k: v.tolist() for k, v in timed.kept.items()} == {k: v.tolist() for k, v in plain.kept.items()}
    assert torch.equal(timed.logits, plain.logits)
    assert (plain.pruning_seconds, timed.pruning_seconds) == (0.0, 2)  # two stages, each read the clock twice: 1-0, 3-2


def test_cached_output_restores_the_module():
    """Inside cached_output the vision tower returns the cached tensor; afterwards it computes again."""
    config = bench.llava_config("tiny", 8, new_tokens=1)
    model, inputs = bench.random_model(config, torch.device("cpu"), torch.float32, 0), bench.random_inputs(config, 0)
    cached = torch.zeros(1, 65, 32)
    with bench.cached_output(model.vision_tower, cached):
        assert model.vision_tower(inputs.pixel_values, -2) is cached
    assert not torch.equal(model.vision_tower(inputs.pixel_values, -2), cached)


def test_peak_bytes_sees_one_allocation():
    """CPU peak memory, read from torch's profiler: one 1 MiB tensor is 2**20 bytes (guards the private API it reads)."""
    assert bench.peak_bytes(lambda: torch.empty(2 ** 20, dtype=torch.uint8), torch.device("cpu")) == 2 ** 20


def test_prefill_can_return_the_last_logits_only():
    """logits_to_keep=1 (what generation and the benchmark use) gives the last row of the full logits, to float32 rounding."""
    config = bench.llava_config("tiny", 8, new_tokens=1)
    model, inputs = bench.random_model(config, torch.device("cpu"), torch.float32, 0), bench.random_inputs(config, 0)
    with torch.inference_mode():
        full, last = model(inputs).logits, model(inputs, logits_to_keep=1).logits
    assert full.shape == (1, 104, config.text_config.vocab_size) and last.shape == (1, 1, config.text_config.vocab_size)
    diff = (last - full[:, -1:]).abs().max().item()  # not bit-equal: a one-row matmul takes another kernel
    assert diff <= 1e-5, f"last-row logits differ by {diff:.2e}"
