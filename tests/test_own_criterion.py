# python -m pytest tests/test_own_criterion.py -q
"""A criterion of one's own: a function criterion(query, keys, budget) in a Stage runs inside the
model like the built-in ones, prints by its name, and a wrong return value is named, not used."""
import pytest
import torch

from feather_mini import load_pretrained, pruning, synthetic
from feather_mini import SHIPPED_WEIGHTS


@pytest.fixture(scope="module")
def shipped():
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    example = synthetic.example("test", 4)  # "Where is the yellow circle?"
    return model, processor(example.scene.image(), example.question.question)


def first_visual(query, keys, budget):
    """The first `budget` visual tokens present, whatever the scores: the top rows of the image."""
    return torch.arange(budget)


def test_function_criterion_prints_by_name():
    """print(schedule) names the function where a built-in criterion shows its symbol."""
    schedule = pruning.Schedule((pruning.Stage(1, first_visual, 0.25),), "mine")
    assert str(schedule) == "mine: layer 1: top 25% of original by first_visual"


def test_function_criterion_equal_to_phi_no_rope_keeps_the_same_tokens(shipped):
    """A function that calls phi_no_rope keeps exactly what the fastv_norope preset keeps, at both stages of a
    two-stage schedule (the second stage scores only the tokens still present)."""
    model, inputs = shipped
    mine = lambda query, keys, budget: pruning.phi_no_rope(query, keys, budget)  # noqa: E731
    built_in = pruning.Schedule((pruning.Stage(1, "phi_no_rope", 0.5), pruning.Stage(3, "phi_no_rope", 0.25)))
    own = pruning.Schedule((pruning.Stage(1, mine, 0.5), pruning.Stage(3, mine, 0.25)))
    a, b = model(inputs, schedule=built_in).kept, model(inputs, schedule=own).kept
    assert {layer: len(k) for layer, k in b.items()} == {1: 72, 3: 36}
    assert all(torch.equal(a[layer], b[layer]) for layer in (1, 3))


def test_function_criterion_indices_are_among_the_tokens_present(shipped):
    """Returned indices count among the visual tokens still present: keeping the first 36 of the 72 kept at
    layer 1 keeps the 36 lowest original indices of those 72."""
    model, inputs = shipped
    schedule = pruning.Schedule((pruning.Stage(1, "phi_no_rope", 0.5), pruning.Stage(3, first_visual, 0.25)))
    kept = model(inputs, schedule=schedule).kept
    assert kept[3].tolist() == kept[1][:36].tolist()
    only = model(inputs, schedule=pruning.Schedule((pruning.Stage(2, first_visual, 0.25),))).kept
    assert only[2].tolist() == list(range(36))  # rows 0, 1 and 2 of the 12x12 grid


@pytest.mark.parametrize("returned, message", [
    ([0, 1, 2], "returned a list; expected a 1-d int64 tensor of kept indices"),
    (torch.arange(36, dtype=torch.int32), "returned a torch.int32 tensor of shape (36,); expected a 1-d int64"),
    (torch.arange(35), "returned 35 indices; the stage keeps exactly 36"),
    (torch.arange(36).flip(0), "expected sorted, unique indices in [0, 144)"),
    (torch.arange(36) + 110, "expected sorted, unique indices in [0, 144)"),
])
def test_function_criterion_wrong_return_is_named(shipped, returned, message):
    """A list, another dtype, the wrong count, unsorted or out-of-range indices: a ValueError naming the layer
    and the function."""
    model, inputs = shipped

    def bad(query, keys, budget):
        return returned
    with pytest.raises(ValueError, match=r"^layer 1: criterion bad returned") as error:
        model(inputs, schedule=pruning.Schedule((pruning.Stage(1, bad, 0.25),)))
    assert message in str(error.value)


def test_function_criterion_needs_a_fraction_and_takes_no_stride():
    """fraction is required, as for the attention criteria; stride belongs to the grid criteria."""
    with pytest.raises(ValueError, match=r"stage 1 \(layer 1, first_visual\): fraction \(the share of visual tokens"):
        pruning.Schedule((pruning.Stage(1, first_visual),))
    with pytest.raises(ValueError, match="stride=3 only applies to phi_uniform and phi_ensemble"):
        pruning.Schedule((pruning.Stage(1, first_visual, 0.25, stride=3),))
    with pytest.raises(ValueError, match="unknown criterion 'phi_mine'; expected one of .* or a function"):
        pruning.Schedule((pruning.Stage(1, "phi_mine", 0.25),))
