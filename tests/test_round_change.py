"""A full-weight device's round change, factored: exact at GaLore's rank, honest about what it misses."""

import pytest
import torch
from galore_torch import GaLoreAdamW

from fedge.round_change import factored_change

RANK = 4


def _train(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer, steps: int, generator: torch.Generator) -> None:
    for _ in range(steps):
        inputs = torch.randn(32, weight.shape[1], generator=generator)
        targets = torch.randn(32, weight.shape[0], generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(inputs @ weight.T, targets).backward()
        optimizer.step()


def _galore(weight: torch.nn.Parameter) -> GaLoreAdamW:
    return GaLoreAdamW([{"params": [weight], "rank": RANK, "update_proj_gap": 50, "scale": 0.25, "proj_type": "std"}], lr=0.05, weight_decay=0.0, no_deprecation_warning=True)


@pytest.mark.parametrize(("steps_before", "true_rank"), [(0, RANK), (46, 2 * RANK)])  # the second round crosses step 50's refresh
def test_a_galore_round_is_carried_exactly_at_its_rank(steps_before, true_rank):
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(96, 64, generator=generator) / 8)
    optimizer = _galore(weight)
    _train(weight, optimizer, steps_before, generator)
    before = weight.detach().clone()
    _train(weight, optimizer, 8, generator)
    change = factored_change(before, weight, 2 * RANK)
    assert change.left.shape == (96, 2 * RANK) and change.right.shape == (2 * RANK, 64)
    assert change.missed < 1e-5 and torch.allclose(before + change.left @ change.right, weight.detach(), atol=1e-6)
    assert torch.allclose(change.right @ change.right.T, torch.diag((torch.arange(2 * RANK) < true_rank).float()), atol=1e-5)  # orthonormal rows, zeros past the change's rank
    assert factored_change(before, weight, true_rank).missed < 1e-5
    if true_rank > RANK:
        assert factored_change(before, weight, RANK).missed > 1e-2  # one projector's span does not hold a refreshed round


def test_a_dense_change_says_how_much_its_factors_miss():
    generator = torch.Generator().manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(96, 64, generator=generator) / 8)
    before = weight.detach().clone()
    _train(weight, torch.optim.AdamW([weight], lr=0.01), 8, generator)
    change = factored_change(before, weight, 2 * RANK)
    assert 0.1 < change.missed < 1.0
    assert factored_change(before, before, 2 * RANK).missed == 0.0 and not factored_change(before, before, 2 * RANK).left.any()
