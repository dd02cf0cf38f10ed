# python -m pytest tests/test_criteria.py -q
"""Each criterion on hand-made tensors small enough to check on paper."""
import math

import pytest
import torch

from feather_mini.pruning import (attention_scores, density_peaks, phi_ensemble, phi_knn, phi_no_rope, phi_original,
                                  phi_random, phi_uniform, stride_for_budget, top_k)


def rope_example():
    """A 4x4 grid of visual tokens at positions 1..16, the last prompt token at 17.

    One head of size 4 with RoPE theta 100: dims (1, 3) rotate at 0.1 rad per position.
    q = (0, 1, 0, 0) and k_j = (0, a_j, 0, 0), so with RoPE q.k_j = a_j cos(0.1 (16 - j)),
    and without it a_j. The top row is the "true" high scorer: a = 2 there, 1 elsewhere.
    """
    a = torch.tensor([2.0] * 4 + [1.0] * 12)
    query = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    keys = torch.zeros(1, 16, 4)
    keys[0, :, 1] = a
    return query, keys, torch.arange(1, 17)


def test_rope_decay_makes_phi_original_keep_the_bottom_row():
    """With RoPE the 4 kept tokens are the bottom row (q.k = 0.921..0.995 there vs 0.535 at most in the top row)."""
    query, keys, positions = rope_example()
    assert phi_original(query, keys, 17, positions, 4, rope_theta=100.0).tolist() == [12, 13, 14, 15]


def test_phi_no_rope_keeps_the_true_high_scorers():
    """Without RoPE the top row (a = 2) wins, wherever it sits."""
    query, keys, _ = rope_example()
    assert phi_no_rope(query, keys, 4).tolist() == [0, 1, 2, 3]


def test_phi_original_depends_only_on_relative_positions():
    """Shifting every position by 100 keeps the same tokens: RoPE scores see only distances."""
    query, keys, positions = rope_example()
    assert phi_original(query, keys, 117, positions + 100, 4, rope_theta=100.0).tolist() == [12, 13, 14, 15]


def test_attention_scores_average_softmaxes_over_heads_with_grouped_keys():
    """2 query heads share 1 key head; softmax over the visual keys only, then the head mean."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])  # (n_kv=1, N=3, hs=2)
    scores = attention_scores(query, keys)
    # Head 0 sees logits (2, 0, 0) / sqrt(2), head 1 (0, 2, 0) / sqrt(2): token 0 and 1 tie.
    e = math.exp(2 / math.sqrt(2))
    expected = [(e / (e + 2) + 1 / (e + 2)) / 2] * 2 + [1 / (e + 2)]
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, torch.tensor(expected)), scores
    assert phi_no_rope(query, keys, 1).tolist() == [0]  # the tie goes to the lower index


def test_top_k_breaks_ties_towards_the_lower_index():
    """Three tokens tie at 3.0; the two kept are the first two of them, returned sorted."""
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 1.0, 3.0]), 2).tolist() == [1, 2]
    assert top_k(torch.tensor([0.5, 0.1, 0.9]), 2).tolist() == [0, 2]


def test_uniform_stride_3_on_24x24_keeps_64_tokens():
    """Rows 0, 3, ..., 21 and the same columns: 8 x 8 = 64 tokens."""
    assert phi_uniform(24, 24, 3).tolist() == [
        0, 3, 6, 9, 12, 15, 18, 21,
        72, 75, 78, 81, 84, 87, 90, 93,
        144, 147, 150, 153, 156, 159, 162, 165,
        216, 219, 222, 225, 228, 231, 234, 237,
        288, 291, 294, 297, 300, 303, 306, 309,
        360, 363, 366, 369, 372, 375, 378, 381,
        432, 435, 438, 441, 444, 447, 450, 453,
        504, 507, 510, 513, 516, 519, 522, 525,
    ]


def test_uniform_counts_of_reference_md():
    """27x27 at stride 3 keeps 81, at stride 2 196; 4x4 at stride 3 the four corners."""
    assert len(phi_uniform(27, 27, 3)) == 81
    assert len(phi_uniform(27, 27, 2)) == 196
    assert phi_uniform(4, 4, 3).tolist() == [0, 3, 12, 15]
    assert phi_uniform(5, 5, 2).tolist() == [0, 2, 4, 10, 12, 14, 20, 22, 24]


@pytest.mark.parametrize("rows, budget, stride", [(24, 144, 2), (24, 64, 3), (27, 182, 2), (27, 81, 3),
                                                  (12, 36, 2), (4, 16, 1), (24, 100, 3), (24, 104, 2)])
def test_stride_for_budget_picks_the_nearest_grid(rows, budget, stride):
    """24x24: stride 2 = 144, 3 = 64 tokens, so 100 -> 3 and 104 (a tie, 40 off each) -> 2, the
    larger grid; 27x27: 2 = 196, 3 = 81 (Table 1 keeps 182: stride 2)."""
    assert stride_for_budget(rows, rows, budget) == stride


def knn_example():
    """Two tight clusters (a centre and its 4 neighbours at distance 1) and two outliers."""
    points = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1),
              (40, 40), (41, 40), (39, 40), (40, 41), (40, 39),
              (20, 0), (0, 40)]
    return torch.tensor(points, dtype=torch.float32)


def test_density_peaks_by_hand():
    """D = distance / sqrt(2). A centre's 5 nearest squared: 0 and 4 x 0.5 -> density exp(-0.4);
    a neighbour's: 0, 0.5, 1, 1, 2 -> exp(-0.9). Cluster B's centre ties cluster A's and comes
    later, so its delta is the distance to A's centre, 40; A's centre gets the largest D."""
    density, delta = density_peaks(knn_example())
    assert torch.allclose(density[[0, 1, 5, 6]], torch.tensor([math.exp(-0.4), math.exp(-0.9)] * 2))
    assert density[10:].tolist() == [0.0, 0.0]  # outliers: exp(-(~200)) underflows
    assert delta[5].item() == pytest.approx(40.0)
    assert delta[0].item() == pytest.approx(math.dist((-1, 0), (41, 40)) / math.sqrt(2))
    assert delta[1].item() == pytest.approx(1 / math.sqrt(2))


def test_phi_knn_keeps_one_token_per_cluster_and_never_an_outlier():
    """Budget 2: the two centres. Budget 3: then the first neighbour (8 neighbours tie)."""
    features = knn_example()
    assert phi_knn(features, 2).tolist() == [0, 5]
    assert phi_knn(features, 3).tolist() == [0, 1, 5]


def test_ensemble_unites_phi_no_rope_with_the_grid():
    """phi_-R's top row [0, 1, 2, 3] united with the stride-3 corners [0, 3, 12, 15]: 6 tokens."""
    query, keys, _ = rope_example()
    kept = phi_ensemble(query, keys, 4, 4, 4, stride=3)
    assert kept.tolist() == [0, 1, 2, 3, 12, 15]
    assert len(kept) == 6


def test_every_criterion_returns_sorted_unique_int64():
    """The contract every caller relies on: int64, ascending, unique, within 0..N-1."""
    torch.manual_seed(0)
    query, keys = torch.randn(4, 8), torch.randn(2, 36, 8)
    results = [phi_original(query, keys, 50, torch.arange(5, 41), 9, 10000.0), phi_no_rope(query, keys, 9),
               phi_knn(torch.randn(36, 16), 9), phi_uniform(6, 6, 2), phi_ensemble(query, keys, 9, 6, 6, 2)]
    for kept in results:
        assert kept.dtype == torch.int64
        assert kept.tolist() == sorted(set(kept.tolist()))
        assert 0 <= kept.min().item() and kept.max().item() < 36


def test_uniform_grid_is_built_on_the_requested_device():
    """phi_ensemble unites phi_-R's indices with the grid on the scores' device (a CUDA run must not mix devices)."""
    assert phi_uniform(4, 4, 3, device="meta").device.type == "meta"


def test_phi_random_is_a_fixed_seeded_subset():
    """The control draws the same sorted subset on every call: seed 0 keeps 4 of 16 as pinned here."""
    kept = phi_random(16, 4)
    assert kept.tolist() == [6, 9, 10, 12]  # torch.randperm(16) with seed 0, first 4, sorted
    assert kept.dtype == torch.int64 and phi_random(16, 4).tolist() == kept.tolist()
    assert phi_random(16, 4, seed=1).tolist() == [4, 5, 6, 15]
