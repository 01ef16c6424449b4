"""The randomized range finder behind FlexLoRA's and FedEx-LoRA's server step on large fleets."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.strategies import ClientUpdate, StrategyError, make_strategy
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, base_deltas
from fedge.strategies.factored import stack, svd
from fedge.strategies.sketch import SketchSettings, StackBuffer, leading_svd, stacked, top_svd
from fedge.wire import LoraSpec

RANKS = (2, 4, 8, 16)
ROWS, COLS, KEPT = 96, 80, 16
MODULE = "base_model.model.model.layers.0.self_attn.q_proj"


def fleet_round(clients: int, seed: int, local_change: float = 0.05) -> tuple[np.ndarray, list[tuple[float, np.ndarray, np.ndarray]]]:
    """A later round: every client began from the global (its top r_i directions, singular values 1/j) and moved a
    little. Returns the global A (KEPT × COLS) and the (c_i, B_i, A_i) terms."""
    rng = np.random.default_rng(seed)
    left = np.linalg.qr(rng.standard_normal((ROWS, KEPT)))[0] / np.arange(1, KEPT + 1)
    global_a = np.linalg.qr(rng.standard_normal((COLS, KEPT)))[0].T
    weights = rng.uniform(1, 5, clients)
    terms = []
    for index, weight in enumerate(weights / weights.sum()):
        rank = RANKS[index % len(RANKS)]
        b = left[:, :rank] + local_change * rng.standard_normal((ROWS, rank)) / np.sqrt(ROWS)
        a = global_a[:rank] + local_change * rng.standard_normal((rank, COLS)) / np.sqrt(COLS)
        terms.append((float(weight), b.astype(np.float32), a.astype(np.float32)))
    return global_a.astype(np.float32), terms


def relative_gap(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def test_the_warm_started_range_finder_matches_the_exact_truncation_of_a_large_fleet():
    global_a, terms = fleet_round(clients=40, seed=0)
    exact = svd(stack(terms)).truncated(KEPT).dense()
    assert sum(b.shape[1] for _, b, _ in terms) == 300  # stacked rank far above KEPT and the matrix's own size
    warm = leading_svd(terms, KEPT, SketchSettings(), StackBuffer(), likely_rows=global_a)
    assert relative_gap(warm.truncated(KEPT).dense(), exact) < 1e-3
    assert np.allclose(warm.u.T @ warm.u, np.eye(KEPT), atol=1e-5) and np.allclose(warm.vt @ warm.vt.T, np.eye(KEPT), atol=1e-5)
    cold = leading_svd(terms, KEPT, SketchSettings(power_iterations=2), StackBuffer())
    assert relative_gap(cold.truncated(KEPT).dense(), exact) < 1e-3  # without a warm start, power iterations get there
    again = leading_svd(terms, KEPT, SketchSettings(), StackBuffer(), likely_rows=global_a)
    assert np.array_equal(warm.s, again.s)  # a fixed test matrix: a resumed round gives the same global


def test_small_fleets_keep_the_exact_svd():
    global_a, terms = fleet_round(clients=4, seed=1)
    settings = SketchSettings()
    assert not settings.worth_it(sum(b.shape[1] for _, b, _ in terms), KEPT)
    chosen = top_svd(terms, KEPT, settings, StackBuffer(), likely_rows=global_a)
    assert np.array_equal(chosen.s, svd(stack(terms)).s)


def test_no_movement_at_all_gives_no_directions_and_no_error():
    terms = [(0.1, np.zeros((ROWS, rank), np.float32), np.zeros((rank, COLS), np.float32)) for rank in RANKS * 10]
    result = leading_svd(terms, KEPT, SketchSettings(), StackBuffer())
    assert result.s.size == 0 and result.truncated(KEPT).dense().shape == (ROWS, COLS)


def _updates(terms) -> list[ClientUpdate]:
    updates = []
    for index, (weight, b, a) in enumerate(terms):
        rank = b.shape[1]
        updates.append(ClientUpdate(f"c{index}", max(1, int(weight * 1000)), LoraSpec(("q_proj",), (0,), (rank,), 1.0), {MODULE + A_SUFFIX: a, MODULE + B_SUFFIX: b}))
    return updates


def _state(global_a: np.ndarray) -> dict[str, np.ndarray]:
    return {MODULE + A_SUFFIX: global_a, MODULE + B_SUFFIX: np.zeros((ROWS, KEPT), np.float32)}


def test_flexlora_on_a_large_fleet_sends_back_the_top_directions():
    global_a, terms = fleet_round(clients=40, seed=2)
    updates = _updates(terms)
    weights = np.array([u.num_examples for u in updates], float)
    expected = svd(stack([(w / weights.sum(), b, a) for w, (_, b, a) in zip(weights, terms)])).truncated(KEPT).dense()
    merged = make_strategy("flexlora").aggregate(_state(global_a), updates, 1)
    assert relative_gap(merged[MODULE + B_SUFFIX] @ merged[MODULE + A_SUFFIX], expected) < 1e-3


def test_fedex_lora_beyond_its_exact_rank_sends_the_residuals_top_directions():
    global_a, terms = fleet_round(clients=40, seed=3)
    updates = _updates(terms)
    exact_state = make_strategy("fedex-lora").aggregate(_state(global_a), updates, 1)
    cut_state = make_strategy("fedex-lora", exact_residual_rank=64).aggregate(_state(global_a), updates, 1)
    exact_change = base_deltas(exact_state)[1]
    cut_change = base_deltas(cut_state)[1]
    exact_residual = exact_change[f"{MODULE}.left"] @ exact_change[f"{MODULE}.right"]
    cut = cut_change[f"{MODULE}.left"]
    assert exact_change[f"{MODULE}.left"].shape[1] > KEPT and cut.shape[1] == KEPT
    best = svd(stack([(1.0, exact_change[f"{MODULE}.left"], exact_change[f"{MODULE}.right"])])).truncated(KEPT).dense()
    left_out = np.linalg.norm(exact_residual - cut @ cut_change[f"{MODULE}.right"])  # what the cut residual misses
    assert left_out < 1.02 * np.linalg.norm(exact_residual - best) < np.linalg.norm(exact_residual)  # near the best rank-R correction


@pytest.mark.parametrize("options", [{"power_iterations": -1}, {"oversampling": 0}, {"power_iterations": 1.5}])
def test_range_finder_options_are_checked(options):
    with pytest.raises(StrategyError, match="a whole number"):
        make_strategy("flexlora", **options)
    with pytest.raises(StrategyError):
        make_strategy("fedex-lora", exact_residual_rank=0)


def test_the_round_record_is_told_where_the_server_step_was_not_exact():
    global_a, terms = fleet_round(clients=40, seed=4)
    updates = _updates(terms)
    assert "randomized range finder on 1 of 1 modules (stacked rank up to 300)" in make_strategy("flexlora").notes(_state(global_a), updates)["svd"]
    assert make_strategy("flexlora").notes(_state(global_a), updates[:4]) == {}
    assert "not exact on 1 of 1 modules" in make_strategy("fedex-lora", exact_residual_rank=64).notes(_state(global_a), updates)["residual"]
    assert make_strategy("fedex-lora").notes(_state(global_a), updates) == {}  # 300 + 16 is within the default 512


def test_wire_float16_factors_are_stacked_exactly_beside_float32_ones():
    _, terms = fleet_round(clients=12, seed=5)
    mixed = [(weight, b.astype(np.float16), a.astype(np.float16)) for weight, b, a in terms[:-1]] + [terms[-1]]  # FedEx-LoRA's −B̄Ā stays float32
    for block in (array for _, b, a in mixed for array in (b, a)):
        block.flags.writeable = False  # as decoded from the wire
    buffer = StackBuffer()
    for _ in range(2):  # the second module reuses the buffer's arrays
        left, right, weights = stacked(mixed, buffer)
        assert np.array_equal(left.numpy(), np.concatenate([b.astype(np.float32) for _, b, _ in mixed], axis=1))
        assert np.array_equal(right.numpy(), np.concatenate([a.astype(np.float32) for _, _, a in mixed], axis=0))
        assert np.array_equal(weights.numpy(), np.concatenate([np.full(b.shape[1], w, np.float32) for w, b, _ in mixed]))
