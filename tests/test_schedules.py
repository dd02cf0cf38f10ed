# python -m pytest tests/test_schedules.py -q
"""Schedules as data: presets, scaling to a model's depth, FLOPs, and the errors of bad schedules."""
import pytest
import torch

from feather_mini.pruning import (Schedule, Stage, ensemble, fastv, fastv_norope, feather, flops_reduction, knn,
                                  pyramid_drop, scale_layer, uniform)


def test_presets_print_in_one_line():
    """print(schedule) tells the reader what happens at which layer."""
    assert str(fastv()) == "fastv: layer 3: top 25% of original by phi_original"
    assert str(fastv_norope(8)) == "fastv_norope: layer 8: top 25% of original by phi_-R"
    assert str(knn()) == "knn: layer 3: top 25% of original by phi_KNN"
    assert str(uniform()) == "uniform: layer 3: the grid nearest 25% of original"
    assert str(ensemble()) == "ensemble: layer 3: top 25% of original by phi_-R + stride-3 grid"
    assert str(pyramid_drop()) == ("pyramid_drop: layer 8: top 50% of original by phi_original; "
                                   "layer 16: top 25% of original by phi_original; "
                                   "layer 24: top 12.5% of original by phi_original")
    assert str(feather()) == ("feather: layer 8: top 30% of original by phi_-R + stride-3 grid; "
                              "layer 16: top 9% of present by phi_-R")


def test_presets_scale_to_the_model_depth_and_say_so(capsys):
    """Written for 32 layers: a 16-layer model gets layers * 16/32; the schedule's note says so, and
    building it prints nothing (printing is the caller's choice)."""
    schedule = feather(num_layers=16)
    assert schedule.layers == [4, 8]
    assert schedule.note == "layers 8,16 of 32 scaled to 4,8 of 16 (x L/32, rounded)"
    assert str(schedule).startswith("feather [layers 8,16 of 32 scaled to 4,8 of 16 (x L/32, rounded)]: layer 4:")
    assert fastv().note == ""  # 32 layers: nothing to say
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("num_layers, expected", [(8, [1, 2, 4, 6]), (12, [1, 3, 6, 9]), (10, [1, 3, 5, 8]),
                                                  (32, [3, 8, 16, 24]), (40, [4, 10, 20, 30])])
def test_scale_layer_rounds_half_up(num_layers, expected):
    """Layers 3, 8, 16, 24 of 32 at other depths; 10 layers: 8 -> 2.5 -> 3 and 24 -> 7.5 -> 8."""
    assert [scale_layer(layer, num_layers) for layer in (3, 8, 16, 24)] == expected


def test_feather_counts_follow_reference_md():
    """729 tokens: 218 by phi_-R + up to 81 grid -> 218..299, then 9% -> 19..26 (the paper's 24
    is inside). 576 tokens: 172 + up to 64 -> 172..236, then 15..21."""
    assert feather().check(32, 729, (27, 27)) == {8: (218, 299), 16: (19, 26)}
    assert feather().check(32, 576, (24, 24)) == {8: (172, 236), 16: (15, 21)}
    assert fastv().check(32, 729, (27, 27)) == {3: (182, 182)}
    assert uniform().check(32, 729, (27, 27)) == {3: (196, 196)}  # stride 2
    assert pyramid_drop().check(32, 576, (24, 24)) == {8: (288, 288), 16: (144, 144), 24: (72, 72)}


@pytest.mark.parametrize("schedule, expected", [(fastv(3), 0.68), (fastv(8), 0.56), (uniform(3), 0.66),
                                                (uniform(8), 0.55)])
def test_flops_reduction_matches_table_1(schedule, expected):
    """LLaVA-7B sizes, 729 visual and 10 text tokens: Table 1's FLOPs column within one point."""
    assert flops_reduction(schedule, num_visual_tokens=729, num_text=10) == pytest.approx(expected, abs=0.01)


def test_flops_reduction_from_a_runs_kept_counts():
    """Keeping every token reduces nothing; kept counts may be given as ints or index lists."""
    assert flops_reduction({3: 729}, 729, 10) == 0.0
    assert flops_reduction({3: list(range(182))}, 729, 10) == flops_reduction({3: 182}, 729, 10)
    assert flops_reduction({3: 182}, 729, 10) == flops_reduction(fastv(3), 729, 10)


def error_of(build):
    with pytest.raises(ValueError) as e:
        build()
    return str(e.value)


def test_layer_below_1_is_refused():
    """The score at layer K comes from layer K-1, so K = 0 cannot be a stage."""
    assert error_of(lambda: Schedule([Stage(0, "phi_original", 0.25)])) == (
        "schedule 'custom', stage 1 (layer 0, phi_original): layer 0 must be an int >= 1 "
        "(the score comes from layer - 1)")


def test_layer_beyond_the_model_is_refused():
    """fastv at layer 32 exists in a 32-layer model's numbering only up to 31."""
    assert error_of(lambda: fastv(32).check(32, 576, (24, 24))) == (
        "schedule 'fastv', stage 1 (layer 32, phi_original): layer 32 is not below the model's depth of 32 layers")


def test_stages_out_of_order_are_refused():
    """Stages run in the decoder's order; a later stage at an earlier layer is a mistake."""
    assert error_of(lambda: Schedule([Stage(16, "phi_no_rope", 0.5), Stage(8, "phi_no_rope", 0.1)])) == (
        "schedule 'custom', stage 2 (layer 8, phi_no_rope): layer 8 must come after the previous stage's "
        "layer 16 (stages in increasing layer order)")


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_budget_outside_0_1_is_refused(fraction):
    """fraction is a share: 0 keeps nothing, a negative or > 1 share is meaningless."""
    assert error_of(lambda: Schedule([Stage(3, "phi_original", fraction)])) == (
        f"schedule 'custom', stage 1 (layer 3, phi_original): fraction={fraction!r} must be a share in (0, 1] "
        "of the visual tokens in the original grid")


def test_budget_larger_than_the_tokens_present_is_refused():
    """50% of the original 576 = 288 tokens cannot be kept after a stage left 144."""
    schedule = Schedule([Stage(2, "phi_original", 0.25), Stage(4, "phi_original", 0.5)])
    assert error_of(lambda: schedule.check(8, 576, (24, 24))) == (
        "schedule 'custom', stage 2 (layer 4, phi_original): keeps 288 visual tokens but as few as 144 are present")


def test_budget_that_keeps_nothing_is_refused():
    """9% of at most 5 tokens present rounds down to 0 tokens."""
    schedule = Schedule([Stage(2, "phi_original", 0.3), Stage(4, "phi_no_rope", 0.09, of_present=True)])
    assert error_of(lambda: schedule.check(8, 16, (4, 4))) == (
        "schedule 'custom', stage 2 (layer 4, phi_no_rope): keeps 0 of the 4 visual tokens present; raise fraction")


def test_stride_below_1_is_refused():
    """Stride 0 would lay no grid at all."""
    assert error_of(lambda: Schedule([Stage(3, "phi_uniform", stride=0)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_uniform): stride 0 must be an int >= 1")


def test_knn_after_a_first_stage_is_refused():
    """The vision features describe the original grid; after a stage there are none for the survivors."""
    assert error_of(lambda: Schedule([Stage(2, "phi_no_rope", 0.5), Stage(4, "phi_knn", 0.1)])) == (
        "schedule 'custom', stage 2 (layer 4, phi_knn): phi_knn needs the vision backbone's features, which "
        "exist only for the original visual tokens; it can only be the first stage")


def test_grid_that_is_not_the_visual_token_count_is_refused():
    """With CLIP's CLS token kept ("full"), 577 visual tokens do not form the 24x24 grid."""
    assert error_of(lambda: uniform().check(32, 577, (24, 24))) == (
        "schedule 'uniform', stage 1 (layer 3, phi_uniform): the grid (24, 24) does not hold the model's 577 "
        "visual tokens, so a uniform grid cannot be laid over them")


def test_unknown_criterion_and_missing_fraction_are_refused():
    """Typos and forgotten budgets are named, with the criteria that exist."""
    assert error_of(lambda: Schedule([Stage(3, "phi_magic", 0.5)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_magic): unknown criterion 'phi_magic'; expected one of "
        "['phi_original', 'phi_no_rope', 'phi_knn', 'phi_uniform', 'phi_ensemble', 'phi_random'] "
        "(pruning.register_criterion adds one) or a function select(inputs, count)")
    assert error_of(lambda: Schedule([Stage(3, "phi_no_rope")])) == (
        "schedule 'custom', stage 1 (layer 3, phi_no_rope): fraction (the share of visual tokens kept) or count "
        "is required")
    assert error_of(lambda: Schedule([])) == (
        "schedule 'custom' has no stages (for no pruning, pass no schedule)")


def test_knn_without_vision_features_is_refused():
    """A Pruner used on a bare decoder, with no vision features given, names what is missing."""
    pruner = Schedule([Stage(1, "phi_knn", 0.5)]).pruner(16, (4, 4), visual_start=2, rope_theta=10000.0)
    with pytest.raises(ValueError) as e:
        pruner.select(1, torch.zeros(1, 2, 20, 4), torch.zeros(1, 2, 20, 4), torch.arange(20)[None])
    assert str(e.value) == "layer 1: phi_knn needs the vision backbone's features, and none were given"


def test_options_that_would_be_ignored_are_refused():
    """A stride on an attention criterion, of_present on a first-stage-only criterion, fraction=True."""
    assert error_of(lambda: Schedule([Stage(3, "phi_no_rope", 0.25, stride=3)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_no_rope): stride=3 only applies to phi_uniform and phi_ensemble")
    assert error_of(lambda: Schedule([Stage(3, "phi_knn", 0.25, of_present=True)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_knn): of_present does not apply: phi_knn is a first stage, "
        "where every visual token is present")
    assert error_of(lambda: Schedule([Stage(3, "phi_no_rope", True)])).endswith(
        "fraction=True must be a share in (0, 1] of the visual tokens in the original grid")


def test_stages_must_be_stage_objects():
    """A tuple in place of a Stage is named, not met later by an AttributeError."""
    with pytest.raises(TypeError) as e:
        Schedule([(3, "phi_original", 0.25)])
    assert str(e.value) == "schedule 'custom', stage 1: expected a Stage, got (3, 'phi_original', 0.25)"


def test_preset_too_deep_for_a_shallow_model_is_refused():
    """pyramid_drop's layers 8, 16, 24 of 32 collapse to 1, 1, 2 in a 2-layer model."""
    assert error_of(lambda: pyramid_drop(num_layers=2)) == (
        "pyramid_drop: layers 8,16,24 of 32 scale to 1,1,2 of 2, which collide: the model is too shallow "
        "for this preset")


def test_bools_strings_and_bad_seeds_are_refused_when_built():
    """True is an int to Python but not a layer or a stride; of_present must be a bool; the
    control's seed is checked when the schedule is built, not when it first runs."""
    assert error_of(lambda: Schedule([Stage(True, "phi_original", 0.25)])) == (
        "schedule 'custom', stage 1 (layer True, phi_original): layer True must be an int >= 1 "
        "(the score comes from layer - 1)")
    assert error_of(lambda: Schedule([Stage(3, "phi_uniform", stride=True)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_uniform): stride True must be an int >= 1")
    assert error_of(lambda: Schedule([Stage(3, "phi_no_rope", 0.25, of_present="yes")])) == (
        "schedule 'custom', stage 1 (layer 3, phi_no_rope): of_present='yes' must be True or False")
    assert error_of(lambda: Schedule([Stage(3, "phi_random", 0.25, seed=-1)])) == (
        "schedule 'custom', stage 1 (layer 3, phi_random): seed=-1 must be an int >= 0 (phi_random's generator)")


def test_presets_need_a_positive_depth_and_refuse_another_models_depth():
    """num_layers 0 is refused; fastv() is numbered for 32 layers, so an 8-layer model refuses it
    rather than pruning at layer 3 of 8; fastv(num_layers=8) is accepted by that model."""
    assert error_of(lambda: fastv(num_layers=0)) == "fastv: num_layers=0 must be the model's decoder depth, an int >= 1"
    assert error_of(lambda: fastv().check(8, 144, (12, 12))) == (
        "schedule 'fastv' is numbered for 32 decoder layers, but the model has 8: build it with num_layers=8")
    assert fastv(num_layers=8).check(8, 144, (12, 12)) == {1: (36, 36)}
    assert Schedule([Stage(3, "phi_original", 0.25)]).check(8, 144, (12, 12)) == {3: (36, 36)}  # custom: any depth


@pytest.mark.parametrize("layer", [-5, 0, -100, 2.5, True])
@pytest.mark.parametrize("num_layers", [8, 32])
def test_preset_layer_is_checked_before_it_is_scaled(layer, num_layers):
    """fastv(layer=-5, num_layers=8) became layer 1 (scaled, then clamped); now refused at every depth alike."""
    assert error_of(lambda: fastv(layer=layer, num_layers=num_layers)) == (
        f"fastv: layer={layer!r} must be an int >= 1, in the presets' numbering of 32 layers (num_layers scales it)")
