# python -m pytest tests/test_batch.py -q
"""Batched inference with pruning: several images and questions in one prefill and one generate,
each prompt pruned on its own. Every prompt of a batch must select the tokens and give the answer
it gives alone, with its prompt's logits equal within float32 rounding; a batch of one must equal
the single prompt bit for bit. On feather-tiny (12x12 visual tokens, 8 layers), every preset."""
import pytest
import torch

from feather_mini import SHIPPED_WEIGHTS, cli, load_pretrained, pruning, synthetic

# Questions of different lengths (the last far longer), about different images, with short and long
# answers: "yes" ends at its second token while a box takes several more.
EXAMPLES = [4, 5, 9]
LONG = "Where is the red circle " + "red " * 40 + "?"


@pytest.fixture(scope="module")
def shipped():
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    images = [synthetic.example("test", i).scene.image() for i in EXAMPLES] + [synthetic.example("test", 0).scene.image()]
    questions = [synthetic.example("test", i).question.question for i in EXAMPLES] + [LONG]
    return model, processor, images, questions


SCHEDULES = cli.schedules(list(cli.METHODS), 8, both_layers=True)


def kept_row(kept: torch.Tensor) -> list[int]:
    return kept[kept >= 0].tolist()


@pytest.mark.parametrize("method, schedule", SCHEDULES, ids=[f"{m}-{s.layers if s else ''}" for m, s in SCHEDULES])
def test_each_prompt_of_a_batch_is_pruned_and_answered_as_alone(shipped, method, schedule):
    """For every preset (the random control reseeded per prompt, as eval does): the kept original indices
    of every stage and the greedy answer of each prompt equal its single run's."""
    model, processor, images, questions = shipped
    per_prompt = [pruning.reseeded(schedule, i) for i in range(len(questions))]
    batch = model.generate(processor(images, questions), 12, per_prompt if schedule else None)
    assert len(batch.texts) == len(questions) == len(batch.sequences)
    for b, (image, question) in enumerate(zip(images, questions)):
        alone = model.generate(processor(image, question), 12, per_prompt[b] if schedule else None)
        assert batch.sequences[b] == alone.token_ids and batch.texts[b] == alone.text
        assert {layer: kept_row(k[b]) for layer, k in batch.kept.items()} == \
            {layer: k.tolist() for layer, k in alone.kept.items()}


@pytest.mark.parametrize("method, schedule", SCHEDULES, ids=[f"{m}-{s.layers if s else ''}" for m, s in SCHEDULES])
def test_prompt_logits_of_a_batch_match_each_prompt_alone(shipped, method, schedule):
    """Each prompt's rows of the batch's logits (its first `lengths[b]`) equal its single prefill's within
    float32 rounding, pruned (FEATHER keeps a different number of tokens per image) or not."""
    model, processor, images, questions = shipped
    per_prompt = [pruning.reseeded(schedule, i) for i in range(len(questions))] if schedule else None
    batch = model(processor(images, questions), schedule=per_prompt)
    for b, (image, question) in enumerate(zip(images, questions)):
        alone = model(processor(image, question), schedule=per_prompt[b] if schedule else None).logits[0]
        assert batch.lengths[b] == len(alone)
        diff = (batch.logits[b, :batch.lengths[b]] - alone).abs().max().item()
        assert diff < 1e-4, f"prompt {b}: max difference {diff}"


def test_ragged_stage_is_padded_with_minus_one(shipped):
    """FEATHER's first stage keeps the top 30% united with the grid, a different count per image: kept is
    (B, k) with k the largest count and the shorter rows padded with -1."""
    model, processor, images, questions = shipped
    kept = model(processor(images, questions), schedule=pruning.feather(num_layers=8)).kept[2]
    counts = [(row >= 0).sum().item() for row in kept]
    assert kept.shape == (4, max(counts)) and len(set(counts)) > 1
    assert all((row[n:] == -1).all() and (row[:n] >= 0).all() for row, n in zip(kept, counts))


def test_a_batch_of_one_equals_one_prompt_bit_for_bit(shipped):
    """processor([image], [question]) gives the logits, kept indices and answer of processor(image, question)."""
    model, processor, images, questions = shipped
    schedule = pruning.feather(num_layers=8)
    one, alone = processor(images[:1], questions[:1]), processor(images[0], questions[0])
    assert torch.equal(model(one, schedule=schedule).logits, model(alone, schedule=schedule).logits)
    a, b = model.generate(one, 12, schedule), model.generate(alone, 12, schedule)
    assert a.token_ids == b.token_ids and a.texts == [b.text]
    assert all(torch.equal(a.kept[layer][0], b.kept[layer]) for layer in b.kept)


def test_processor_pads_each_prompt_on_the_right(shipped):
    """The batch's input_ids: each prompt's own ids first, then id 0 up to the longest; lengths say where
    each ends; the visual span starts at one index in all."""
    _, processor, images, questions = shipped
    batch = processor(images, questions)
    singles = [processor(i, q) for i, q in zip(images, questions)]
    assert batch.lengths == [s.input_ids.shape[1] for s in singles] and batch.input_ids.shape[1] == max(batch.lengths)
    for row, s, n in zip(batch.input_ids, singles, batch.lengths):
        assert torch.equal(row[:n], s.input_ids[0]) and (row[n:] == 0).all()
    assert batch.visual_start == singles[0].visual_start and batch.pixel_values.shape == (4, 3, 96, 96)


def test_processor_refuses_lists_of_different_lengths(shipped):
    _, processor, images, questions = shipped
    with pytest.raises(ValueError, match=r"^a batch takes a list of images and a list of questions of one length; "
                                         r"got 2 and 4$"):
        processor(images[:2], questions)


def test_one_schedule_per_prompt_or_one_for_all(shipped):
    model, processor, images, questions = shipped
    with pytest.raises(ValueError, match=r"^2 schedules for a batch of 4: give one, or one per prompt \(None for a "
                                         r"prompt not pruned\)$"):
        model(processor(images, questions), schedule=[pruning.fastv(num_layers=8)] * 2)


def test_a_batch_may_mix_schedules(shipped):
    """One prompt unpruned, one under FastV, one under FEATHER (the demo batches its methods so): each is
    answered as alone, and a prompt's rows of a stage it does not have are all -1."""
    model, processor, images, questions = shipped
    schedules = [None, pruning.fastv(num_layers=8), pruning.feather(num_layers=8)]
    batch = model.generate(processor(images[:3], questions[:3]), 12, schedules)
    for b, s in enumerate(schedules):
        alone = model.generate(processor(images[b], questions[b]), 12, s)
        assert batch.sequences[b] == alone.token_ids
        assert {layer: kept_row(k[b]) for layer, k in batch.kept.items() if kept_row(k[b])} == \
            {layer: k.tolist() for layer, k in alone.kept.items()}
    assert (batch.kept[1][0] == -1).all() and (batch.kept[2][1] == -1).all()
