# python -m pytest tests/test_own_criterion.py -q
"""A criterion of one's own: a function select(inputs, count), registered by name or put in a Stage,
gets everything a stage knows (query, keys, projected embeddings, hidden states, the original indices
still present, the grid), runs inside the model like the built-in ones at any stage, may return its
indices in any order, prints by its name, and a wrong return value is named, not used."""
import pytest
import torch

from feather_mini import load_pretrained, pruning, synthetic
from feather_mini import SHIPPED_WEIGHTS
from feather_mini.pruning import Schedule, Stage


@pytest.fixture(scope="module")
def shipped():
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    example = synthetic.example("test", 4)  # "Where is the yellow circle?"
    return model, processor(example.scene.image(), example.question.question)


def first_visual(inputs, count):
    """The first `count` visual tokens present, whatever the scores: the top rows of the image."""
    return torch.arange(count)


def largest_norm(inputs, count):
    """The visual tokens whose projected embedding is longest (ties to the lower index)."""
    return pruning.top_k(inputs.embeddings.float().norm(dim=-1), count)


@pytest.fixture(autouse=True, scope="module")
def registered():
    pruning.register_criterion("l2_norm", largest_norm, symbol="phi_L2")
    yield
    del pruning.CRITERIA["l2_norm"]


def test_function_criterion_prints_by_name():
    """print(schedule) names the function where a built-in criterion shows its symbol; a count prints as is."""
    schedule = Schedule((Stage(1, first_visual, 0.25), Stage(2, "l2_norm", count=9)), "mine")
    assert str(schedule) == "mine: layer 1: top 25% of original by first_visual; layer 2: top 9 by phi_L2"


def test_l2_norm_criterion_by_hand():
    """Four visual tokens whose embeddings have norms 1, 3, 2, 0 (a 2x2 grid): the first stage keeps the
    2 longest, [1, 2]; after a stage that kept [0, 1, 3] (norms 1, 3, 0) it keeps the longest of those,
    original index 1 (present index 1), whatever the query and keys."""
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])
    q, k, positions, hidden = torch.zeros(1, 1, 6, 2), torch.zeros(1, 1, 6, 2), torch.arange(6)[None], torch.zeros(1, 6, 2)
    one = Schedule([Stage(1, "l2_norm", count=2)]).pruner(4, (2, 2), 1, 10000.0, embeddings=embeddings)
    one.select(1, q, k, positions, hidden)
    assert one.kept[1].tolist() == [1, 2]
    two = Schedule([Stage(1, first_three, count=3), Stage(2, "l2_norm", count=1)]).pruner(
        4, (2, 2), 1, 10000.0, embeddings=embeddings)
    rows = two.select(1, q, k, positions, hidden)
    two.select(2, q[:, :, rows], k[:, :, rows], positions[:, rows], hidden[:, rows])
    assert two.kept[1].tolist() == [0, 1, 3] and two.kept[2].tolist() == [1]


def first_three(inputs, count):
    """Keeps original indices 0, 1, 3 of a 2x2 grid, returned in reverse order (any order is allowed)."""
    return torch.tensor([3, 1, 0])


def test_a_stage_knows_what_is_present(shipped):
    """At a second stage, inputs.present holds the first stage's kept indices, and keys, embeddings and
    hidden states cover exactly those tokens: 72 of them, with the model's widths (2 heads of 64, width 128)."""
    model, inputs = shipped
    seen = {}

    def look(stage_inputs, count):
        seen["inputs"] = stage_inputs
        return torch.arange(count)
    kept = model(inputs, schedule=Schedule([Stage(1, "phi_no_rope", 0.5), Stage(3, look, count=10)])).kept
    s = seen["inputs"]
    assert torch.equal(s.present, kept[1]) and s.layer == 3 and s.grid_shape == (12, 12)
    assert (tuple(s.keys.shape), tuple(s.embeddings.shape), tuple(s.hidden.shape)) == ((4, 72, 32), (72, 128), (72, 128))
    assert kept[3].tolist() == kept[1][:10].tolist()


def test_l2_norm_in_the_model_keeps_the_longest_embeddings(shipped):
    """In the shipped model, at layer 2, l2_norm keeps the 36 visual tokens whose projected embedding is
    longest, computed apart from the model."""
    model, inputs = shipped
    kept = model(inputs, schedule=Schedule([Stage(2, "l2_norm", 0.25)])).kept[2]
    embeddings = model.image_features(inputs.pixel_values)[0]
    assert kept.tolist() == pruning.top_k(embeddings.norm(dim=-1), 36).tolist()


def test_function_criterion_equal_to_phi_no_rope_keeps_the_same_tokens(shipped):
    """A function that calls phi_no_rope keeps exactly what the fastv_norope preset keeps, at both stages of a
    two-stage schedule (the second stage scores only the tokens still present)."""
    model, inputs = shipped
    mine = lambda s, count: pruning.phi_no_rope(s.query, s.keys, count)  # noqa: E731
    built_in = Schedule((Stage(1, "phi_no_rope", 0.5), Stage(3, "phi_no_rope", 0.25)))
    own = Schedule((Stage(1, mine, 0.5), Stage(3, mine, 0.25)))
    a, b = model(inputs, schedule=built_in).kept, model(inputs, schedule=own).kept
    assert {layer: len(k) for layer, k in b.items()} == {1: 72, 3: 36}
    assert all(torch.equal(a[layer], b[layer]) for layer in (1, 3))


def test_function_criterion_indices_are_among_the_tokens_present(shipped):
    """Returned indices count among the visual tokens still present: keeping the first 36 of the 72 kept at
    layer 1 keeps the 36 lowest original indices of those 72."""
    model, inputs = shipped
    schedule = Schedule((Stage(1, "phi_no_rope", 0.5), Stage(3, first_visual, 0.25)))
    kept = model(inputs, schedule=schedule).kept
    assert kept[3].tolist() == kept[1][:36].tolist()
    only = model(inputs, schedule=Schedule((Stage(2, first_visual, 0.25),))).kept
    assert only[2].tolist() == list(range(36))  # rows 0, 1 and 2 of the 12x12 grid


def test_indices_in_any_order_and_exact_counts(shipped):
    """Indices returned in reverse order are sorted; Stage(count=37) keeps exactly 37 (no fraction needed)."""
    model, inputs = shipped
    kept = model(inputs, schedule=Schedule((Stage(2, lambda s, n: torch.arange(n).flip(0), count=37),))).kept
    assert kept[2].tolist() == list(range(37))


@pytest.mark.parametrize("returned, message", [
    ([0, 1, 2], "returned a list; expected a 1-d int64 tensor of kept indices"),
    (torch.arange(36, dtype=torch.int32), "returned a torch.int32 tensor of shape (36,); expected a 1-d int64 tensor of kept indices"),
    (torch.arange(35), "returned 35 indices; the stage keeps exactly 36"),
    (torch.arange(36) + 110, "returned index 144, outside the 144 visual tokens present (0..143)"),
    (torch.cat([torch.arange(35), torch.tensor([7])]), "returned index 7 more than once"),
])
def test_function_criterion_wrong_return_is_named(shipped, returned, message):
    """A list, another dtype, the wrong count, out-of-range or repeated indices: a ValueError naming the layer
    and the function, and one index, not all of them."""
    model, inputs = shipped

    def bad(inputs, count):
        return returned
    with pytest.raises(ValueError) as error:
        model(inputs, schedule=Schedule((Stage(1, bad, 0.25),)))
    assert str(error.value) == f"layer 1: criterion bad {message}"


def test_function_criterion_needs_a_size_and_takes_no_stride():
    """A fraction or a count is required, as for the attention criteria; stride belongs to the grid criteria."""
    with pytest.raises(ValueError, match=r"stage 1 \(layer 1, first_visual\): fraction \(the share of visual tokens"):
        Schedule((Stage(1, first_visual),))
    with pytest.raises(ValueError, match="stride=3 only applies to phi_uniform and phi_ensemble"):
        Schedule((Stage(1, first_visual, 0.25, stride=3),))
    with pytest.raises(ValueError, match=r"unknown criterion 'phi_mine'; expected one of .*\(pruning.register_criterion adds one\)"):
        Schedule((Stage(1, "phi_mine", 0.25),))
    with pytest.raises(ValueError, match=r"give a fraction or a count of visual tokens kept, not both$"):
        Schedule((Stage(1, first_visual, 0.25, count=3),))
    with pytest.raises(ValueError, match=r"count=0 must be an int >= 1 \(visual tokens kept\)$"):
        Schedule((Stage(1, first_visual, count=0),))


def test_register_refuses_built_in_names_and_non_functions():
    with pytest.raises(ValueError, match=r"^'phi_no_rope' is a built-in criterion; register yours under another name$"):
        pruning.register_criterion("phi_no_rope", largest_norm)
    with pytest.raises(TypeError, match=r"^criterion 'x': select must be a function select\(inputs, count\), got 3$"):
        pruning.register_criterion("x", 3)


def test_uniform_takes_a_count():
    """phi_uniform given count=36 on a 12x12 grid picks the stride whose grid is nearest 36: stride 2 (36)."""
    assert Schedule([Stage(1, "phi_uniform", count=36)]).check(8, 144, (12, 12)) == {1: (36, 36)}
