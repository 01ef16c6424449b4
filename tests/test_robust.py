"""The robust aggregation rules against insiders: enrolled devices that sign poisoned updates.

Honest devices move their view of the state along one shared direction plus their own non-IID noise; attackers
sign-flip (with an inflated example count), scale, or send a constant direction. What is checked is the aggregate
the strategy then computes, against the honest devices' plain average.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import ConfigError, CoordinatorConfig
from fedge.coordinator.reputation import Reputation
from fedge.coordinator.robust import RobustRules, agreements, bound_norms, cells, guard_updates, movement, trust_factors
from fedge.strategies import ClientInfo, ClientUpdate, make_strategy
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, base_deltas
from fedge.wire import LoraSpec

LAYERS, ROWS, COLS, RANK = 2, 24, 32, 8
MODULES = [f"base_model.model.model.layers.{layer}.self_attn.q_proj" for layer in range(LAYERS)]


def initial_state(strategy_name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lora = {}
    for module in MODULES:
        lora[module + A_SUFFIX] = rng.normal(size=(RANK, COLS)).astype(np.float32) * 0.1
        lora[module + B_SUFFIX] = rng.normal(size=(ROWS, RANK)).astype(np.float32) * 0.01
    base = {module: rng.normal(size=(ROWS, COLS)).astype(np.float32) for module in MODULES}
    return make_strategy(strategy_name).initial_state(lora, base)


def spec(rank: int, scaling: float = 2.0) -> LoraSpec:
    return LoraSpec(("q_proj",), tuple(range(LAYERS)), (rank,) * LAYERS, scaling)


def fleet(strategy_name: str, ranks: list[int], attack: str | None, attackers: int = 1, seed: int = 0, noise: float = 0.5):
    """(strategy, state, updates, starts, honest agent ids): honest devices share a direction, plus noise."""
    rng = np.random.default_rng(seed)
    strategy = make_strategy(strategy_name)
    state = initial_state(strategy_name, rng)
    direction = {key: rng.normal(size=value.shape).astype(np.float32) * 0.05 for key, value in state.items()}
    updates, starts, honest = [], [], []
    for index, rank in enumerate(ranks):
        client = ClientInfo(f"d{index}", spec(rank))
        start = strategy.update_start(state, client)
        view = strategy.client_view(state, client)
        tensors = {}
        for key, shape in strategy.upload_shapes(state, client.spec).items():
            value = view[key] if key in view else rng.normal(size=shape).astype(np.float32) * 0.1 if key.endswith(A_SUFFIX) else np.zeros(shape, np.float32)
            cut = direction[key][tuple(slice(0, extent) for extent in value.shape)]
            move = cut + rng.normal(size=value.shape).astype(np.float32) * 0.05 * noise
            if key.endswith(B_SUFFIX):
                move = move / client.spec.scaling
            tensors[key] = value + move
        count = 100 + 20 * index
        if index >= len(ranks) - attackers and attack is not None:
            tensors, count = poisoned(attack, tensors, start, rng), 3000 if attack == "sign_flip" else count
        else:
            honest.append(client.agent_id)
        updates.append(ClientUpdate(client.agent_id, count, client.spec, tensors))
        starts.append(start)
    return strategy, state, updates, starts, honest


def poisoned(attack: str, tensors: dict, start: dict, rng: np.random.Generator) -> dict:
    out = {}
    for key, value in tensors.items():
        move = value - start.get(key, 0)
        if attack == "sign_flip":
            move = -move
        elif attack == "scale":
            move = 200 * move
        elif attack == "scaled_flip":
            move = -200 * move
        elif attack == "constant":
            move = np.full_like(move, 0.2)
        elif attack == "random_signs":  # each attacker its own fixed ±1 pattern, five times its honest movement's RMS
            move = 5 * float(np.sqrt(np.mean(np.square(move)))) * rng.choice((-1.0, 1.0), size=move.shape).astype(np.float32)
        out[key] = start.get(key, 0) + move
    return out


def movement_of(strategy, state: dict, aggregated: dict) -> np.ndarray:
    """The change of the global product B·A per module, flattened: what the model actually learns."""
    parts = []
    for module in MODULES:
        before = state[module + B_SUFFIX].astype(np.float64) @ state[module + A_SUFFIX]
        after = aggregated[module + B_SUFFIX].astype(np.float64) @ aggregated[module + A_SUFFIX]
        parts.append((after - before).ravel())
    return np.concatenate(parts)


def aggregate(strategy, state, updates, starts, rules: RobustRules | None, keep: list[str] | None = None):
    chosen = [(update, start) for update, start in zip(updates, starts) if keep is None or update.agent_id in keep]
    chosen_updates, chosen_starts = [u for u, _ in chosen], [s for _, s in chosen]
    if rules is None:
        return strategy.aggregate(state, chosen_updates, 1), None
    guarded = guard_updates(chosen_updates, [u.num_examples for u in chosen_updates], chosen_starts, rules, 0.5, strategy.coordinatewise)
    return strategy.aggregate(state, guarded.updates, 1), guarded


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def error(movement: np.ndarray, reference: np.ndarray) -> float:
    """How far an aggregate's movement is from the honest devices' own, relative to theirs."""
    return float(np.linalg.norm(movement - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("attack", ["sign_flip", "scale", "constant"])
@pytest.mark.parametrize("strategy_name", ["hetlora", "fedit", "flexlora"])
def test_one_attacker_of_four_does_not_steer_the_aggregate(strategy_name: str, attack: str) -> None:
    ranks = [8, 8, 8, 8] if strategy_name == "fedit" else [4, 8, 8, 8]
    strategy, state, updates, starts, honest = fleet(strategy_name, ranks, attack)
    clean, _ = aggregate(strategy, state, updates, starts, None, keep=honest)
    attacked_plain, _ = aggregate(strategy, state, updates, starts, RobustRules(combiner="mean", norm_multiple=0))
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    reference = movement_of(strategy, state, clean)
    defended_error, plain_error = error(movement_of(strategy, state, defended), reference), error(movement_of(strategy, state, attacked_plain), reference)
    assert defended_error < 0.6 and defended_error < plain_error / 2  # the honest devices alone, clamped, differ from their plain mean by about this
    assert guarded.outliers == ("d3",)


def test_honest_non_iid_devices_are_kept() -> None:
    """No attacker, strongly differing devices: the default keeps the plain average's direction and size, names
    nobody, and gives every device its example share (under the shrinking cap)."""
    strategy, state, updates, starts, _ = fleet("hetlora", [4, 8, 8, 8, 8, 4], None, noise=1.0, seed=3)
    plain, _ = aggregate(strategy, state, updates, starts, RobustRules(combiner="mean", norm_multiple=0))
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    plain_move, defended_move = movement_of(strategy, state, plain), movement_of(strategy, state, defended)
    assert cosine(defended_move, plain_move) > 0.9
    assert 0.8 < np.linalg.norm(defended_move) / np.linalg.norm(plain_move) < 1.2
    assert guarded.outliers == () and guarded.scaled == {}
    counts = np.array([update.num_examples for update in updates], dtype=float)
    assert np.allclose(list(guarded.shares.values()), counts / counts.sum(), atol=1e-6)


def test_scaled_update_is_bounded_by_the_median_and_named() -> None:
    strategy, state, updates, starts, _ = fleet("hetlora", [8, 8, 8, 8], "scale")
    _, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    assert set(guarded.scaled) == {"d3"} and guarded.scaled["d3"] < 0.05
    record = guarded.to_record(RobustRules())
    assert record["outliers"] == ["d3"] and record["scaled_down"]["d3"] == pytest.approx(guarded.scaled["d3"], abs=1e-4)


def test_weight_cap_shrinks_with_contributors() -> None:
    strategy, state, updates, starts, _ = fleet("hetlora", [8] * 10, "sign_flip", attackers=2)
    _, guarded = aggregate(strategy, state, updates, starts, RobustRules(combiner="mean", norm_multiple=0))
    assert max(guarded.shares.values()) == pytest.approx(1.5 / 10)


@pytest.mark.parametrize("attack", ["sign_flip", "constant"])
def test_two_attackers_of_ten(attack: str) -> None:
    strategy, state, updates, starts, honest = fleet("hetlora", [4, 8, 8, 8, 4, 8, 8, 8, 4, 8], attack, attackers=2)
    clean, _ = aggregate(strategy, state, updates, starts, None, keep=honest)
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    assert cosine(movement_of(strategy, state, defended), movement_of(strategy, state, clean)) > 0.8
    assert set(guarded.outliers) == {"d8", "d9"}


def test_two_scaled_attackers_among_six_holders_of_the_deep_ranks_do_not_turn_the_honest_holders_into_outliers() -> None:
    """Rows 8–15 are held by six devices, two of them the attackers (sign flip ×200, bounded to 3× the median):
    a reference that only trims one value at each end would follow the attackers there and make the four honest
    holders look like the outliers."""
    ranks = [16, 8, 8, 8, 16, 8, 16, 16, 16, 16]
    strategy, state, updates, starts, honest = fleet("hetlora", ranks, "scaled_flip", attackers=2, seed=4, noise=4.0)
    clean, _ = aggregate(strategy, state, updates, starts, None, keep=honest)
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    assert set(guarded.outliers) == {"d8", "d9"} and guarded.shares["d8"] == guarded.shares["d9"] == 0.0
    assert all(guarded.trust[agent] == 1.0 for agent in honest)
    assert cosine(movement_of(strategy, state, defended), movement_of(strategy, state, clean)) > 0.8


def test_past_the_reference_cap_a_random_sample_of_judges_still_finds_the_attackers(monkeypatch) -> None:
    """Thousands of devices: a random sample of the judges (here 8 of 20) sets each block's reference and range."""
    import fedge.coordinator.robust as robust

    monkeypatch.setattr(robust, "MAX_REFERENCE", 8)
    strategy, state, updates, starts, honest = fleet("hetlora", [8] * 20, "sign_flip", attackers=4, seed=8)
    clean, _ = aggregate(strategy, state, updates, starts, None, keep=honest)
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    assert set(guarded.outliers) == {"d16", "d17", "d18", "d19"}
    assert cosine(movement_of(strategy, state, defended), movement_of(strategy, state, clean)) > 0.9


def test_geometric_median_gives_the_far_device_little_weight() -> None:
    strategy, state, updates, starts, honest = fleet("hetlora", [4, 8, 8, 8], "sign_flip")
    clean, _ = aggregate(strategy, state, updates, starts, None, keep=honest)
    defended, guarded = aggregate(strategy, state, updates, starts, RobustRules(combiner="geometric_median"))
    assert guarded.shares["d3"] < min(guarded.shares[agent] for agent in honest)
    assert cosine(movement_of(strategy, state, defended), movement_of(strategy, state, clean)) > 0.8


def test_flora_factors_are_bounded_by_norm_only() -> None:
    """FLoRA's factors have no common coordinates: no clamping, but a scaled update is still bounded."""
    strategy, state, updates, starts, _ = fleet("flora", [8, 8, 8, 8], "scale")
    _, guarded = aggregate(strategy, state, updates, starts, RobustRules())
    assert set(guarded.scaled) == {"d3"} and guarded.agreement == {}


def full_fleet(scale_last: float) -> tuple[list[ClientUpdate], list[np.ndarray]]:
    """Four devices' factored round changes (orthonormal right factors) of one module, the last scaled by
    ``scale_last`` in its left factor only (the right one must stay orthonormal to pass the coordinator's check)."""
    rng = np.random.default_rng(3)
    updates, changes = [], []
    for index in range(4):
        left = rng.normal(size=(ROWS, 4)).astype(np.float32) * 0.01 * (scale_last if index == 3 else 1.0)
        right = np.linalg.qr(rng.normal(size=(COLS, 4)))[0].T.astype(np.float32)
        updates.append(ClientUpdate(f"d{index}", 100, spec(2), {MODULES[0] + CHANGE_LEFT_SUFFIX: left, MODULES[0] + CHANGE_RIGHT_SUFFIX: right}))
        changes.append(left.astype(np.float64) @ right)
    return updates, changes


@pytest.mark.parametrize("combiner", ["winsorized_mean", "geometric_median"])
def test_a_scaled_full_change_is_bounded_on_its_left_factor_so_the_change_shrinks_by_the_factor_itself(combiner: str) -> None:
    """The right factor's orthonormal rows carry no length: the bound measures and scales the left factor, and the
    change by exactly the factor named. Factors in each device's own basis get no combiner (no agreement)."""
    updates, changes = full_fleet(200.0)
    guarded = guard_updates(updates, [100] * 4, [{}] * 4, RobustRules(combiner=combiner), 1.0, coordinatewise=False)
    assert set(guarded.scaled) == {"d3"} and guarded.agreement == {}
    factor = guarded.scaled["d3"]
    assert 1 / 400 < factor < 1 / 20  # 200 times the others' RMS, scaled to 3 times their median
    sent = guarded.updates[3].tensors
    assert np.array_equal(sent[MODULES[0] + CHANGE_RIGHT_SUFFIX], updates[3].tensors[MODULES[0] + CHANGE_RIGHT_SUFFIX])
    assert np.allclose(sent[MODULES[0] + CHANGE_LEFT_SUFFIX].astype(np.float64) @ sent[MODULES[0] + CHANGE_RIGHT_SUFFIX], factor * changes[3], rtol=1e-4, atol=1e-9)
    averaged = base_deltas(make_strategy("full").aggregate(initial_state("full", np.random.default_rng(0)), guarded.updates, 1))[1]
    honest_scale = max(np.linalg.norm(change) for change in changes[:3])
    assert np.linalg.norm(averaged[MODULES[0] + ".left"].astype(np.float64) @ averaged[MODULES[0] + ".right"]) < 2 * honest_scale


@pytest.mark.parametrize("count", [4, 5, 6, 10])
def test_agreement_is_the_cosine_with_the_other_judges_mean_clamped_into_their_central_band(count: int) -> None:
    rng = np.random.default_rng(count)
    moved = [{"k": rng.normal(size=(4, 6)).astype(np.float32)} for _ in range(count)]
    judges = [index != 1 for index in range(count)]  # device 1 is not trusted: judged, but no part of any reference
    members = [index for index in range(count) if judges[index]]
    values = np.stack([moved[index]["k"].ravel() for index in members]).astype(np.float64)
    trim = (len(members) - 2) // 2
    ordered = np.sort(values, axis=0)
    clamped = np.clip(values, ordered[trim], ordered[len(members) - 1 - trim])
    for index, cosine in enumerate(agreements(moved, judges)):
        others = [row for row, member in enumerate(members) if member != index]
        reference, own = clamped[others].mean(axis=0), moved[index]["k"].ravel()
        assert cosine == pytest.approx(own @ reference / np.linalg.norm(own) / np.linalg.norm(reference), abs=1e-5)


def test_two_insiders_pushing_random_directions_do_not_find_each_other_in_their_reference() -> None:
    """Two of six send their own random ±1 directions, large (bounded to three times the median RMS): wherever they
    push a coordinate the same way they are its two largest values. Clamped only into the combiner's range (one
    value trimmed per end) each would find the other in its reference and agree about as much as honest devices
    do; in the judges' central band they agree under half as much as the least of them."""
    strategy, state, updates, starts, honest = fleet("hetlora", [8] * 6, "random_signs", attackers=2, seed=3, noise=1.0)
    moved = [movement(update, start) for update, start in zip(updates, starts)]
    bound_norms(moved, [update.agent_id for update in updates], 3.0)
    cosines = agreements(moved, [True] * 6)
    assert max(cosines[4:]) < 0.5 * min(cosines[:4])


def test_cells_follow_the_ranks_each_device_holds() -> None:
    blocks = cells([(4, 32), (8, 32), (8, 32)])
    assert [(block[0], members) for block, members in blocks] == [(slice(0, 4), [0, 1, 2]), (slice(4, 8), [1, 2])]
    core_blocks = dict((tuple((s.start, s.stop) for s in block), members) for block, members in cells([(2, 2), (4, 4)]))
    assert core_blocks[((0, 2), (0, 2))] == [0, 1] and core_blocks[((2, 4), (2, 4))] == [1] and core_blocks[((0, 2), (2, 4))] == [1]


def test_trust_is_regained_slowly_and_quarantine_follows_outlier_rounds_in_a_row() -> None:
    reputation = Reputation(memory=0.8, quarantine_after=2)
    assert reputation.remembered("b", 0.0) == 0.0 and reputation.remembered("a", 1.0) == 1.0
    assert reputation.observe(1, {"a": 1.0, "b": 0.0}, ["b"]) == []
    assert reputation.remembered("b", 1.0) == pytest.approx(0.2)  # one honest-looking round does not buy it back
    assert reputation.remembered("b", 0.1) == pytest.approx(0.02)  # and this round's evidence always caps it
    assert reputation.observe(2, {"a": 1.0}, []) == []  # b sat out: its streak holds
    assert reputation.observe(3, {"a": 1.0, "b": 0.0}, ["b"]) == ["b"]
    assert "2 rounds in a row" in reputation.reason("b") and reputation.reason("a") is None
    resumed = Reputation(memory=0.8, quarantine_after=2)
    resumed.replay([{"round": 1, "contributors": ["a", "b"], "robust": {"outliers": ["b"], "trust": {"a": 1.0, "b": 0.0}}},
                    {"round": 2, "contributors": ["b"], "robust": {"outliers": ["b"], "trust": {"b": 0.1}}}])
    assert resumed.reason("b") is not None and resumed.trust["b"] == 0.1
    never = Reputation(memory=0.8, quarantine_after=0)
    for round_number in range(1, 5):
        never.observe(round_number, {"b": 0.0}, ["b"])
    assert never.reason("b") is None


def test_a_remembered_outlier_keeps_a_small_weight_on_the_layers_only_it_and_one_other_train() -> None:
    """Round 1 shows the attacker disagreeing; in round 2 its update looks ordinary, yet its remembered trust keeps
    its share small."""
    strategy, state, updates, starts, honest = fleet("hetlora", [8, 8, 8, 8], "sign_flip")
    reputation = Reputation(memory=0.8, quarantine_after=0)
    first = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert first.trust["d3"] == 0.0 and first.shares["d3"] == 0.0 and "d3" not in {u.agent_id for u in first.updates}
    reputation.observe(1, first.trust, first.outliers)
    strategy, state, updates, starts, honest = fleet("hetlora", [8, 8, 8, 8], None, seed=1)
    second = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert second.trust["d3"] == pytest.approx(0.2) and second.shares["d3"] < 0.1


def test_a_round_without_consensus_is_no_evidence_either_way() -> None:
    """Late in a run honest non-IID movements barely agree; such a round must not hand a caught attacker its
    weight back (nor take an honest device's away)."""
    assert trust_factors([-0.3, 0.02, 0.1, 0.3], 2.0, [False, True, True, True]) == pytest.approx([0.0, 0.4, 1.0, 1.0])  # the judges' median: 0.1
    assert trust_factors([-0.3, 0.02, -0.04, -0.1], 2.0, [False, True, True, True]) == [None] * 4
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {"d3": 0.0, "d0": 1.0}, ["d3"])
    assert reputation.remembered("d3", None) == 0.0 and reputation.remembered("d0", None) == 1.0


def test_a_caught_attacker_stays_out_of_the_reference_while_honest_devices_barely_agree() -> None:
    """Round 2 of a run: d3 was caught sign-flipping in round 1, and the honest devices' movements are mostly their
    own noise. d3 is judged against the honest devices' median, not its own pull on it, and regains nothing."""
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {"d0": 1.0, "d1": 1.0, "d2": 1.0, "d3": 0.0}, ["d3"])
    for seed in (7, 11):  # judged with d3 in the reference, an honest device lost all its weight in these two
        strategy, state, updates, starts, honest = fleet("hetlora", [8, 8, 8, 8], "sign_flip", seed=seed, noise=6.0)
        guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
        assert guarded.trust["d3"] == 0.0 and guarded.shares["d3"] == 0.0
        assert all(guarded.trust[agent] > 0.5 for agent in honest)


def test_a_look_that_would_distrust_most_devices_is_no_evidence(monkeypatch) -> None:
    """Three devices trusted before, five that lost weight earlier and now barely agree with them: judged by the
    three's median, most of the fleet would be outliers. The rules assume attackers are a minority, so the look
    changes nobody's trust."""
    import fedge.coordinator.robust as robust

    strategy, state, updates, starts, _ = fleet("hetlora", [8] * 8, None, seed=6)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {**{f"d{i}": 1.0 for i in range(3)}, **{f"d{i}": 0.4 for i in range(3, 8)}}, [f"d{i}" for i in range(3, 8)])
    monkeypatch.setattr(robust, "agreements", lambda moved, judges: [0.4, 0.5, 0.45, 0.05, 0.0, -0.05, 0.02, 0.03])
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert guarded.trust == {**{f"d{i}": 1.0 for i in range(3)}, **{f"d{i}": 0.4 for i in range(3, 8)}}
    monkeypatch.setattr(robust, "agreements", lambda moved, judges: [0.4, 0.5, 0.45, 0.3, 0.35, 0.4, -0.2, 0.03])  # a minority: judged
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert guarded.trust["d6"] == 0.0 and guarded.trust["d7"] == pytest.approx(0.03 / 0.225) and guarded.trust["d3"] == pytest.approx(0.52)


def test_remembered_agreement_keeps_an_honest_device_through_one_bad_round_but_not_a_turned_one(monkeypatch) -> None:
    """d1 agreed well for rounds and now, on its skewed shard, barely does (a = −0.03): its history keeps it. d3
    agreed as well, then turns (a = −0.4, as far against the majority as the bound is with it): caught at once.
    d2 is new and never agrees (a constant direction, a ≈ 0): judged by that in its first round."""
    import fedge.coordinator.robust as robust

    strategy, state, updates, starts, _ = fleet("hetlora", [8] * 6, None, seed=7)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {f"d{i}": 1.0 for i in (0, 1, 3, 4, 5)}, [], {f"d{i}": 0.6 for i in (0, 1, 3, 4, 5)})
    monkeypatch.setattr(robust, "agreements", lambda moved, judges: [0.4, -0.03, 0.01, -0.4, 0.35, 0.3])
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert guarded.trust["d0"] == guarded.trust["d1"] == guarded.trust["d4"] == guarded.trust["d5"] == 1.0
    assert guarded.trust["d3"] == 0.0 and guarded.trust["d2"] < 0.1 and set(guarded.outliers) == {"d2", "d3"}
    alone = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True)  # judged on this round alone, d1 would go too
    assert alone.trust["d1"] == 0.0
    reputation.observe(2, guarded.trust, guarded.outliers, guarded.agreement)
    resumed = Reputation(memory=0.8, quarantine_after=0)
    resumed.replay([{"round": 1, "robust": {"trust": {"d1": 1.0}, "outliers": [], "agreement": {"d1": 0.6}}},
                    {"round": 2, "robust": {"trust": guarded.trust, "outliers": list(guarded.outliers), "agreement": guarded.agreement}}])
    assert resumed.agreement["d1"] == pytest.approx(reputation.agreement["d1"]) == pytest.approx(0.8 * 0.6 + 0.2 * -0.03)


def test_too_few_trusted_devices_to_judge_anything_and_everyone_judges(monkeypatch) -> None:
    """Two of four devices lost their trust: no block has three judges left, so the round is judged as a first
    round is, by everyone, and a distrusted honest device can earn its way back."""
    import fedge.coordinator.robust as robust

    strategy, state, updates, starts, _ = fleet("hetlora", [8] * 4, None, seed=9)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {"d0": 1.0, "d1": 0.0, "d2": 1.0, "d3": 0.0}, ["d1", "d3"])
    seen = []
    monkeypatch.setattr(robust, "agreements", lambda moved, judges: seen.append(list(judges)) or ([None] * 4 if judges.count(True) < 3 else [0.5, 0.45, 0.5, -0.5]))
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert seen[:2] == [[True, False, True, False], [True, True, True, True]]
    assert guarded.trust["d1"] == pytest.approx(0.2) and guarded.trust["d3"] == 0.0


def test_robust_config_is_checked_and_round_trips(tmp_path) -> None:
    base = {"eval_data": "x.jsonl", "insecure": True}
    config = CoordinatorConfig.from_dict({**base, "robust": {"combiner": "geometric_median", "quarantine_after": 3}})
    assert config.robust == RobustRules(combiner="geometric_median", quarantine_after=3)
    assert CoordinatorConfig.from_dict({**config.to_dict()}).robust == config.robust
    with pytest.raises(ConfigError) as error:
        CoordinatorConfig.from_dict({**base, "robust": {"combiner": "krum", "trim_fraction": 0.7, "share": 2, "quarantine_after": 1.5}})
    for problem in ("robust.share: unknown key", "robust.quarantine_after"):
        assert problem in str(error.value)
    with pytest.raises(ConfigError, match="robust.combiner: one of"):
        CoordinatorConfig.from_dict({**base, "robust": {"combiner": "krum"}})


@pytest.mark.parametrize(("past_trust", "moves_by"), [(0.5, 0.6), (0.0, 0.0)])
def test_the_ranks_only_one_device_holds_move_by_its_trust_and_not_at_all_for_an_outlier(past_trust: float, moves_by: float) -> None:
    """Rows 4–7 of A (and columns of B) are d3's alone: no majority can clamp them, so a partly trusted d3 moves them
    only by its trust (0.8 · 0.5 + 0.2 = 0.6), and a d3 still an outlier (trust 0.2, under 1 / outlier_factor) does
    not move them at all; the rows everyone holds are clamped as usual."""
    strategy, state, updates, starts, _ = fleet("hetlora", [4, 4, 4, 8], None, seed=2)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {"d3": past_trust}, ["d3"])  # disagreed last round
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert guarded.trust["d3"] == pytest.approx(0.8 * past_trust + 0.2)
    key = MODULES[0] + A_SUFFIX
    sent, start = updates[3].tensors[key], starts[3][key]
    rebuilt = next(u for u in guarded.updates if u.agent_id == "d3").tensors[key]
    np.testing.assert_allclose(rebuilt[4:] - start[4:], moves_by * (sent[4:] - start[4:]), rtol=1e-4, atol=1e-7)
    assert all(guarded.trust[agent] == 1.0 for agent in ("d0", "d1", "d2"))


def test_an_outlier_neither_steers_nor_holds_back_a_block_it_shares_with_one_trusted_device() -> None:
    """Rows 4–7 are d2's and d3's alone: no majority clamps them. d3, still an outlier (trust 0.2), takes d2's
    movement there, so the block ends where d2 alone would take it (a zeroed movement would have held it back by
    d3's share); HetLoRA weighs d3 by its trust."""
    strategy, state, updates, starts, _ = fleet("hetlora", [4, 4, 8, 8], None, seed=5)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    reputation.observe(1, {"d3": 0.0}, ["d3"])
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert guarded.trust["d3"] == pytest.approx(0.2) and all(guarded.trust[agent] == 1.0 for agent in ("d0", "d1", "d2"))
    rebuilt = {u.agent_id: u for u in guarded.updates}
    for suffix, rows in ((A_SUFFIX, np.s_[4:8]), (B_SUFFIX, np.s_[:, 4:8])):
        key = MODULES[0] + suffix
        moved_by_d2 = updates[2].tensors[key][rows] - starts[2][key][rows]
        np.testing.assert_allclose(rebuilt["d3"].tensors[key][rows] - starts[3][key][rows], moved_by_d2, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rebuilt["d2"].tensors[key][rows], updates[2].tensors[key][rows])
    assert rebuilt["d3"].trust == pytest.approx(0.2) and rebuilt["d0"].trust == 1.0


def test_the_weight_cap_leaves_zero_weights_at_zero_and_never_divides_by_them() -> None:
    from fedge.coordinator.aggregation_guard import capped_weights

    weights = capped_weights([0.0, 0.0, 0.0, 0.0, 3000.0, 10.0, 10.0, 10.0, 10.0, 10.0], 0.15)  # five devices' trust taken away
    assert all(np.isfinite(weights)) and weights[:4] == [0.0] * 4 and weights[4] == pytest.approx(weights[5])  # too few left for the cap: equal shares
    weights = capped_weights([0.0, 0.0, 3000.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0], 0.15)
    assert weights[:2] == [0.0, 0.0] and max(weights) / sum(weights) == pytest.approx(0.15) and all(np.isfinite(weights))


def test_most_devices_losing_their_trust_still_leaves_a_finite_aggregate() -> None:
    strategy, state, updates, starts, honest = fleet("hetlora", [8] * 10, "scale", attackers=2)
    reputation = Reputation(memory=0.8, quarantine_after=0)
    for agent in ("d0", "d1", "d2", "d3", "d8", "d9"):
        reputation.observe(1, {agent: 0.0}, [agent])
    guarded = guard_updates(updates, [u.num_examples for u in updates], starts, RobustRules(), 0.5, True, reputation)
    assert all(np.isfinite(list(guarded.shares.values()))) and sum(guarded.shares.values()) == pytest.approx(1.0)
    assert max(guarded.shares[agent] for agent in ("d0", "d1", "d2", "d3", "d8", "d9")) < 0.1  # distrusted devices are never lifted to the cap
    assert {u.agent_id for u in guarded.updates} and all(np.isfinite(v).all() for v in strategy.aggregate(state, guarded.updates, 2).values())
