# python -m pytest -q tests/test_results_files.py
"""The sweeps that chapters 5 and 6 read from results/: scripts/accuracy_flops.py's schedules, checked
by hand, and the committed rows, one for each schedule the script names (a sweep that stopped early,
or a script changed after its run, shows here)."""
import importlib.util
import json
import math
from pathlib import Path

from feather_mini.pruning import Stage

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("accuracy_flops", ROOT / "scripts" / "accuracy_flops.py")
accuracy_flops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accuracy_flops)


def committed(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "results" / name).read_text().splitlines() if line.strip()]


def test_curves_scale_the_layers_and_measure_each_model_layer_once():
    """Layers 2, 3, 5, 8, 12, 16 of 32 become 2, 3, 5, 8, 11, 15 of 30 (x 30/32, rounded), and 1, 1, 1, 2,
    3, 4 of 8: there only four layers, so 2 criteria x 4 layers x 3 ratios = 24 schedules, against 36."""
    rows = accuracy_flops.curves(30)
    assert len(rows) == 36 and len(accuracy_flops.curves(8)) == 24
    assert sorted({s.stages[0].layer for s in rows.values()}) == [2, 3, 5, 8, 11, 15]
    assert rows["fastv 12.5% from layer 11"].stages == (Stage(11, "phi_original", 0.125),)


def test_stage2_keeps_feathers_first_stage_and_moves_the_second():
    """feather-smol's preset: phi_ensemble 30% at layer 8; the sweep's second stage at 11, 15, 19, 23 or 26
    (12, 16, 20, 24, 28 of 32), by phi_-R, keeping exactly 20, 50 or 100 tokens; and the control, 20 tokens
    at random at the preset's layer 15."""
    rows = accuracy_flops.stage2(30)
    assert len(rows) == 16
    first, second = rows["feather, stage 2 at layer 23 keeping 50"].stages
    assert first == Stage(8, "phi_ensemble", 0.3, stride=3)
    assert second == Stage(23, "phi_no_rope", count=50)
    assert rows["feather, stage 2 at layer 15 keeping 20 at random"].stages == (first, Stage(15, "phi_random", count=20))


def test_criteria_are_eval_presets_at_the_curves_layers():
    """KNN, the grid, the ensemble and the control as eval's Table 1 runs them (a quarter; the ensemble
    a quarter by phi_-R plus the stride-3 grid), at layers 2, 3, 5, 8, 11, 15 of 30: 24 rows; 16 at 8
    layers, where four of the six layers remain."""
    rows = accuracy_flops.criteria(30)
    assert len(rows) == 24 and len(accuracy_flops.criteria(8)) == 16
    assert rows["ensemble from layer 3"].stages == (Stage(3, "phi_ensemble", 0.25, stride=3),)
    assert rows["uniform from layer 15"].stages == (Stage(15, "phi_uniform", 0.25),)


def test_committed_sweeps_hold_one_row_per_schedule_with_consistent_errors():
    """results/accuracy_flops_smol.jsonl, stage2_sweep_smol.jsonl, criteria_flops_smol.jsonl: the rows of
    feather-smol's 30 layers, each named as the script names it, on 100 boxes and 100 other questions,
    each standard error sqrt(p (1 - p) / n)."""
    for file, sweep in (("accuracy_flops_smol.jsonl", accuracy_flops.curves),
                        ("stage2_sweep_smol.jsonl", accuracy_flops.stage2),
                        ("criteria_flops_smol.jsonl", accuracy_flops.criteria)):
        rows = committed(file)
        assert sorted(r["method"] for r in rows) == sorted(sweep(30)), file
        for r in rows:
            assert (r["loc_n"], r["other_n"]) == (100, 100), (file, r["method"])
            for key in ("loc", "other"):
                p = r[f"{key}_acc"]
                assert math.isclose(r[f"{key}_se"], math.sqrt(p * (1 - p) / 100), abs_tol=1e-12), (file, r["method"])
