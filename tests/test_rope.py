# python -m pytest tests/test_rope.py -q
"""RoPE written out: rope_cos_sin and apply_rope on cases small enough to check by hand."""
import math

import torch

from feather_mini.model import apply_rope, rope_cos_sin


def test_one_pair_rotates_by_its_position():
    """With head_dim 2 the single pair turns by p radians: (1, 0) at position p becomes (cos p, sin p)."""
    cos, sin = rope_cos_sin(torch.tensor([[0, 1, 3]]), head_dim=2, theta=10000.0)
    x = torch.tensor([1.0, 0.0]).expand(1, 1, 3, 2)  # (B, nh, T, hs)
    rotated = apply_rope(x, cos, sin)[0, 0]
    expected = torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)], [math.cos(3), math.sin(3)]])
    assert torch.allclose(rotated, expected, atol=1e-6)


def test_half_split_pairs_and_frequencies():
    """head_dim 4 pairs dims (0, 2) and (1, 3); the second pair turns theta^(-1/2) = 1/100 rad a step."""
    cos, sin = rope_cos_sin(torch.tensor([[1]]), head_dim=4, theta=10000.0)
    assert torch.allclose(cos[0, 0], torch.tensor([math.cos(1), math.cos(0.01), math.cos(1), math.cos(0.01)]))
    x = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    assert torch.allclose(apply_rope(x, cos, sin).flatten(), torch.tensor([0.0, math.cos(0.01), 0.0, math.sin(0.01)]))


def test_scores_depend_only_on_relative_position():
    """q.k after RoPE is unchanged when both positions shift by the same amount."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 64, generator=g), torch.randn(1, 1, 1, 64, generator=g)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 64, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 64, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert abs(score(10, 3) - score(1010, 1003)) < 1e-4
    assert abs(score(10, 3) - score(10, 4)) > 1e-3  # and it does depend on the distance


def test_angles_stay_accurate_in_half_precision():
    """cos/sin at position 4095 in float16 are within float16 rounding of float64 (angles are float32)."""
    positions = torch.tensor([[0, 1, 100, 4000, 4095]])
    cos, sin = rope_cos_sin(positions, head_dim=128, theta=10000.0, dtype=torch.float16)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    angles = positions.double()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    assert cos.dtype == torch.float16
    assert (cos.double() - angles.cos()).abs().max().item() < 2e-3
    assert (sin.double() - angles.sin()).abs().max().item() < 2e-3
