"""Property tests of every aggregation strategy on random factors with mixed ranks, depths and scalings."""

from __future__ import annotations

from dataclasses import dataclass

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.strategies import ClientInfo, ClientUpdate, StrategyError, make_strategy
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, C_SUFFIX, CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, base_deltas, delta_key, shared_lora_a
from fedge.strategies.factored import LowRank, compress, stack, svd
from fedge.strategies.full import latest_change_rows
from fedge.wire import LoraSpec

LAYERS = 3
SHAPES = {"self_attn.q_proj": (12, 20), "self_attn.v_proj": (6, 20)}  # out×in, deliberately not square
MAX_RANK = 4


def module(layer: int, name: str) -> str:
    return f"base_model.model.model.layers.{layer}.{name}"


MODULES = [module(layer, name) for layer in range(LAYERS) for name in SHAPES]


def shape_of(mod: str) -> tuple[int, int]:
    return SHAPES[mod.split(".", 5)[-1]]


@dataclass
class Fleet:
    state: dict[str, np.ndarray]
    updates: list[ClientUpdate]


def initial_lora(rng: np.random.Generator) -> dict[str, np.ndarray]:
    state = {}
    for mod in MODULES:
        d, k = shape_of(mod)
        state[mod + A_SUFFIX] = rng.normal(size=(MAX_RANK, k)).astype(np.float32)
        state[mod + B_SUFFIX] = np.zeros((d, MAX_RANK), np.float32)
    return state


def base_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {mod: rng.normal(size=shape_of(mod)).astype(np.float32) for mod in MODULES}


def make_fleet(seed: int, clients: int, name: str, mixed: bool = True) -> Fleet:
    """Random updates: client i trains the top D_i layers, rank per layer from 1..MAX_RANK, its own scaling."""
    rng = np.random.default_rng(seed)
    strategy = make_strategy(name, seed=seed)
    state = strategy.initial_state(initial_lora(rng), base_weights(rng))
    updates = []
    for index in range(clients):
        depth = int(rng.integers(1, LAYERS + 1)) if mixed else LAYERS
        layers = tuple(range(LAYERS - depth, LAYERS))
        ranks = tuple(int(rng.integers(1, MAX_RANK + 1)) if mixed else MAX_RANK for _ in layers)
        spec = LoraSpec(tuple(SHAPES), layers, ranks, float(rng.uniform(0.5, 4.0)))
        tensors = {}
        for mod in MODULES:
            layer = int(mod.split(".layers.")[1].split(".")[0])
            if layer not in spec.layer_ranks:
                continue
            (d, k), r = shape_of(mod), spec.layer_ranks[layer]
            if strategy.recipe.sends == ("C",):
                tensors[mod + C_SUFFIX] = (np.eye(r) + 0.3 * rng.normal(size=(r, r))).astype(np.float32)
            elif strategy.recipe.sends == ("ΔW",):
                tensors[mod + CHANGE_LEFT_SUFFIX] = rng.normal(size=(d, 2 * r)).astype(np.float32)
                tensors[mod + CHANGE_RIGHT_SUFFIX] = rng.normal(size=(2 * r, k)).astype(np.float32)
            else:
                tensors[mod + B_SUFFIX] = rng.normal(size=(d, r)).astype(np.float32)
                if "A" in strategy.recipe.sends:
                    tensors[mod + A_SUFFIX] = rng.normal(size=(r, k)).astype(np.float32)
        hist = tuple(int(x) for x in rng.integers(0, 20, size=4) + 1)
        updates.append(ClientUpdate(f"c{index}", int(rng.integers(1, 100)), spec, tensors, hist))
    return Fleet(state, updates)


def exact(fleet: Fleet, mod: str, a_of=None) -> np.ndarray | None:
    """Σ p_i s_i B_i A_i over the clients that trained ``mod``, p renormalised over them."""
    holders = [u for u in fleet.updates if mod + B_SUFFIX in u.tensors]
    if not holders:
        return None
    total = sum(u.num_examples for u in holders)
    out = 0
    for u in holders:
        a = a_of(u) if a_of else u.tensors[mod + A_SUFFIX]
        out = out + u.num_examples / total * u.spec.scaling * u.tensors[mod + B_SUFFIX].astype(np.float64) @ a.astype(np.float64)
    return out


def padded_mean(holders: list[ClientUpdate], weights, mod: str) -> tuple[np.ndarray, np.ndarray]:
    """(Σ w_i s_i pad(B_i), Σ w_i pad(A_i)) at MAX_RANK, written out independently of the library."""
    a = sum(w * np.pad(u.tensors[mod + A_SUFFIX], ((0, MAX_RANK - u.tensors[mod + A_SUFFIX].shape[0]), (0, 0))) for w, u in zip(weights, holders))
    b = sum(w * u.spec.scaling * np.pad(u.tensors[mod + B_SUFFIX], ((0, 0), (0, MAX_RANK - u.tensors[mod + B_SUFFIX].shape[1]))) for w, u in zip(weights, holders))
    return b, a


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> bool:
    return np.linalg.norm(actual - expected) <= rtol * max(np.linalg.norm(expected), 1e-12)


fleets = st.tuples(st.integers(0, 10_000), st.integers(1, 5))


# --- factored algebra ---
@given(st.integers(0, 10_000), st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_factored_svd_matches_dense_svd(seed, clients):
    rng = np.random.default_rng(seed)
    terms = [(float(rng.uniform(0.1, 1)), rng.normal(size=(30, r)), rng.normal(size=(r, 17))) for r in rng.integers(1, 6, size=clients)]
    product = stack(terms)
    dense = sum(c * b @ a for c, b, a in terms)
    factored = svd(product)
    _, s, _ = np.linalg.svd(dense)
    assert np.allclose(factored.s[: len(s)], s[: len(factored.s)], atol=1e-8 * s[0])
    assert close(product.dense(), dense, 1e-10)
    for rank in (1, 3):
        u, s_, vt = np.linalg.svd(dense)
        assert close(factored.truncated(rank).dense(), (u[:, :rank] * s_[:rank]) @ vt[:rank], 1e-8)
    assert close(compress(product).dense(), dense, 1e-8)
    assert compress(product).rank == np.linalg.matrix_rank(dense)


# --- exact strategies ---
@given(fleets)
@settings(max_examples=25, deadline=None)
def test_flora_base_change_is_the_exact_aggregate(params):
    fleet = make_fleet(*params, "flora")
    new = make_strategy("flora").aggregate(fleet.state, fleet.updates, round_number=3)
    changes = base_deltas(new)[3]
    for mod in MODULES:
        expected = exact(fleet, mod)
        if expected is None:
            assert mod + ".left" not in changes
            continue
        change = LowRank(changes[mod + ".left"], changes[mod + ".right"])
        assert change.dense().shape == shape_of(mod)
        assert close(change.dense(), expected)
        assert change.rank == sum(u.spec.layer_ranks.get(int(mod.split(".layers.")[1].split(".")[0]), 0) for u in fleet.updates)


@given(fleets)
@settings(max_examples=25, deadline=None)
def test_fedex_residual_plus_average_is_exact_in_w0_layout(params):
    fleet = make_fleet(*params, "fedex-lora")
    new = make_strategy("fedex-lora").aggregate(fleet.state, fleet.updates, round_number=1)
    changes = base_deltas(new).get(1, {})
    for mod in MODULES:
        expected = exact(fleet, mod)
        if expected is None:
            continue
        residual = LowRank(changes[mod + ".left"], changes[mod + ".right"]).dense()
        assert residual.shape == shape_of(mod)  # out×in, also for the non-square layers
        assert close(residual + new[mod + B_SUFFIX].astype(np.float64) @ new[mod + A_SUFFIX], expected)


@given(fleets)
@settings(max_examples=25, deadline=None)
def test_ffa_lora_is_exact_with_the_shared_a(params):
    fleet = make_fleet(*params, "ffa-lora")
    strategy = make_strategy("ffa-lora", seed=params[0])
    new = strategy.aggregate(fleet.state, fleet.updates, round_number=1)
    for mod in MODULES:
        shared = fleet.state[mod + A_SUFFIX]
        assert np.array_equal(shared, shared_lora_a(mod, MAX_RANK, shape_of(mod)[1], params[0]))
        assert np.array_equal(shared[:2], shared_lora_a(mod, 2, shape_of(mod)[1], params[0]))  # a rank-2 client's own A
        expected = exact(fleet, mod, a_of=lambda u: shared[: u.tensors[mod + B_SUFFIX].shape[1]])
        if expected is not None:
            assert close(new[mod + B_SUFFIX].astype(np.float64) @ new[mod + A_SUFFIX], expected)
            assert not any(mod + A_SUFFIX in u for u in strategy.upload_shapes(fleet.state, fleet.updates[0].spec))


@given(fleets)
@settings(max_examples=25, deadline=None)
def test_flexlora_svd_is_exact_before_truncation_and_best_after(params):
    fleet = make_fleet(*params, "flexlora")
    new = make_strategy("flexlora").aggregate(fleet.state, fleet.updates, round_number=1)
    for mod in MODULES:
        expected = exact(fleet, mod)
        if expected is None:
            assert np.array_equal(new[mod + A_SUFFIX], fleet.state[mod + A_SUFFIX])  # untouched layer kept
            continue
        holders = [u for u in fleet.updates if mod + B_SUFFIX in u.tensors]
        total = sum(u.num_examples for u in holders)
        product = stack([(u.num_examples / total * u.spec.scaling, u.tensors[mod + B_SUFFIX], u.tensors[mod + A_SUFFIX]) for u in holders])
        assert close(product.dense(), expected)
        u_, s_, vt_ = np.linalg.svd(expected)
        for client in holders:
            rank = client.spec.layer_ranks[int(mod.split(".layers.")[1].split(".")[0])]
            view = make_strategy("flexlora").client_view(new, ClientInfo(client.agent_id, client.spec))
            got = client.spec.scaling * view[mod + B_SUFFIX].astype(np.float64) @ view[mod + A_SUFFIX]
            assert close(got, (u_[:, :rank] * s_[:rank]) @ vt_[:rank], 1e-3)


# --- inexact strategies: what they promise instead ---
def test_fedit_shows_the_aggregation_bias_and_is_exact_for_one_client():
    fleet = make_fleet(7, 4, "fedit", mixed=False)
    new = make_strategy("fedit").aggregate(fleet.state, fleet.updates, round_number=1)
    mod = MODULES[-1]
    expected = exact(fleet, mod)
    error = np.linalg.norm(new[mod + B_SUFFIX] @ new[mod + A_SUFFIX] - expected) / np.linalg.norm(expected)
    assert error > 0.4
    single = make_fleet(8, 1, "fedit", mixed=False)
    new = make_strategy("fedit").aggregate(single.state, single.updates, round_number=1)
    assert close(new[mod + B_SUFFIX].astype(np.float64) @ new[mod + A_SUFFIX], exact(single, mod))


def test_same_rank_strategies_refuse_mixed_ranks_up_front():
    specs = [LoraSpec(("q_proj",), (1, 2), (4, 4), 2.0), LoraSpec(("q_proj",), (2,), (8,), 2.0)]
    for name in ("fedit",):
        with pytest.raises(StrategyError, match="layer 2 has ranks 4 and 8"):
            make_strategy(name).check_ranks(specs)
    for name in ("hetlora", "flexlora", "flora", "fedex-lora", "lora-fair", "ffa-lora", "ce-lora", "full"):
        make_strategy(name).check_ranks(specs)


@given(fleets)
@settings(max_examples=20, deadline=None)
def test_hetlora_pads_and_weights_by_update_norm(params):
    fleet = make_fleet(*params, "hetlora")
    new = make_strategy("hetlora").aggregate(fleet.state, fleet.updates, round_number=1)
    for mod in MODULES:
        holders = [u for u in fleet.updates if mod + A_SUFFIX in u.tensors]
        if not holders:
            continue
        norms = np.array([np.linalg.norm(u.spec.scaling * u.tensors[mod + B_SUFFIX].astype(np.float64) @ u.tensors[mod + A_SUFFIX]) for u in holders])
        weights = norms / norms.sum()
        b, a = padded_mean(holders, weights, mod)
        assert close(new[mod + A_SUFFIX], a) and close(new[mod + B_SUFFIX], b)
    trusts = [0.5 ** index for index in range(len(fleet.updates))]  # the robust rules' factors scale each norm
    distrusted = make_strategy("hetlora").aggregate(fleet.state, [replace(u, trust=t) for u, t in zip(fleet.updates, trusts)], round_number=1)
    for mod in MODULES:
        holders = [(u, t) for u, t in zip(fleet.updates, trusts) if mod + A_SUFFIX in u.tensors]
        if holders:
            norms = np.array([t * np.linalg.norm(u.spec.scaling * u.tensors[mod + B_SUFFIX].astype(np.float64) @ u.tensors[mod + A_SUFFIX]) for u, t in holders])
            b, a = padded_mean([u for u, _ in holders], norms / norms.sum(), mod)
            assert close(distrusted[mod + A_SUFFIX], a) and close(distrusted[mod + B_SUFFIX], b)


@given(fleets, st.sampled_from(["ridge", "cosine"]))
@settings(max_examples=15, deadline=None)
def test_lora_fair_correction_moves_toward_the_exact_aggregate(params, solver):
    fleet = make_fleet(*params, "lora-fair")
    fair = make_strategy("lora-fair", solver=solver, steps=300, learning_rate=1e-2).aggregate(fleet.state, fleet.updates, 1)
    for mod in MODULES:  # FedIT's (B̄, Ā) with padding, the starting point LoRA-FAIR corrects
        holders = [u for u in fleet.updates if mod + A_SUFFIX in u.tensors]
        if not holders:
            continue
        total = sum(u.num_examples for u in holders)
        b_bar, a_bar = padded_mean(holders, [u.num_examples / total for u in holders], mod)
        target = exact(fleet, mod)
        corrected = fair[mod + B_SUFFIX].astype(np.float64) @ fair[mod + A_SUFFIX]
        assert np.allclose(fair[mod + A_SUFFIX], a_bar, atol=1e-5)
        if solver == "ridge":
            assert np.linalg.norm(corrected - target) <= np.linalg.norm(b_bar @ a_bar - target) + 1e-6
        else:
            cos = lambda x: np.sum(x * target) / (np.linalg.norm(x) * np.linalg.norm(target))  # noqa: E731
            assert cos(corrected) >= cos(b_bar @ a_bar) - 1e-6


def test_ce_lora_sends_only_cores_and_personalises():
    fleet = make_fleet(11, 4, "ce-lora")
    strategy = make_strategy("ce-lora")
    for update in fleet.updates:
        shapes = strategy.upload_shapes(fleet.state, update.spec)
        assert shapes and all(key.endswith(C_SUFFIX) and shape[0] == shape[1] for key, shape in shapes.items())
        assert set(shapes) == set(update.tensors)
    new = strategy.aggregate(fleet.state, fleet.updates, 1)
    views = [strategy.client_view(new, ClientInfo(u.agent_id, u.spec)) for u in fleet.updates]
    for update, view in zip(fleet.updates, views):
        assert set(view) == set(update.tensors)  # each gets a core for every module it trained, of its own rank
        assert all(view[key].shape == update.tensors[key].shape for key in view)
    sims = strategy.similarity(fleet.updates)
    assert np.allclose(np.diag(sims), 1.0) and np.allclose(sims, sims.T)
    # identical clients get their own core back unchanged
    twin = [ClientUpdate(f"t{i}", 10, fleet.updates[0].spec, fleet.updates[0].tensors, (1, 2, 3, 4)) for i in range(3)]
    same = strategy.aggregate(fleet.state, twin, 1)
    view = strategy.client_view(same, ClientInfo("t1", twin[0].spec))
    assert all(np.allclose(view[key], twin[0].tensors[key], atol=1e-6) for key in view)
    assert strategy.global_parts(new) is None
    assert strategy.notes(fleet.state, twin) == {}  # both terms present
    silent = [twin[0], ClientUpdate("quiet", 10, twin[1].spec, twin[1].tensors, ())]  # an instruct task, or a device that declined
    assert strategy.notes(fleet.state, silent) == {"data_term": "missing: no label histogram from quiet; the cores were mixed by parameter similarity alone (β = 1 instead of 0.5)"}
    assert np.allclose(strategy.similarity(silent), make_strategy("ce-lora", beta=1.0).similarity(silent))


@given(fleets)
@settings(max_examples=15, deadline=None)
def test_full_weight_average(params):
    """The round's base change is the weighted average of the devices' changes, exactly: the average weight."""
    fleet = make_fleet(*params, "full")
    strategy = make_strategy("full")
    new = strategy.aggregate(fleet.state, fleet.updates, 1)
    changes = base_deltas(new).get(1, {})
    for mod in MODULES:
        holders = [u for u in fleet.updates if mod + CHANGE_LEFT_SUFFIX in u.tensors]
        if not holders:
            assert mod + ".left" not in changes
            continue
        total = sum(u.num_examples for u in holders)
        expected = sum(u.num_examples / total * u.tensors[mod + CHANGE_LEFT_SUFFIX].astype(np.float64) @ u.tensors[mod + CHANGE_RIGHT_SUFFIX] for u in holders)
        assert close(changes[mod + ".left"].astype(np.float64) @ changes[mod + ".right"], expected)
    fresh, caught_up = ClientInfo("new", fleet.updates[0].spec, 0), ClientInfo("old", fleet.updates[0].spec, 1)
    assert set(strategy.client_view(new, fresh)) == {key for key in new if ".base_delta.0001." in key} and strategy.client_view(new, caught_up) == {}
    assert strategy.update_start(new, fresh) == {} and strategy.global_parts(new).base_changes == strategy.client_view(new, fresh)


def test_full_cuts_a_large_fleets_change_to_its_top_directions_and_says_so():
    fleet = make_fleet(6, 5, "full")
    exact = base_deltas(make_strategy("full").aggregate(fleet.state, fleet.updates, 1))[1]
    strategy = make_strategy("full", exact_change_rank=4)
    cut = base_deltas(strategy.aggregate(fleet.state, fleet.updates, 1))[1]
    assert "not exact on" in strategy.notes(fleet.state, fleet.updates)["change"] and make_strategy("full").notes(fleet.state, fleet.updates) == {}
    for module in (key[: -len(".left")] for key in cut if key.endswith(".left")):
        width = max(u.tensors[module + CHANGE_LEFT_SUFFIX].shape[1] for u in fleet.updates if module + CHANGE_LEFT_SUFFIX in u.tensors)
        assert cut[module + ".left"].shape[1] <= width
        whole = exact[module + ".left"].astype(np.float64) @ exact[module + ".right"]
        best = svd(stack([(1.0, exact[module + ".left"], exact[module + ".right"])])).truncated(width).dense()
        kept = cut[module + ".left"].astype(np.float64) @ cut[module + ".right"]
        assert np.linalg.norm(kept - whole) <= 1.05 * np.linalg.norm(best - whole) + 1e-5 * np.linalg.norm(whole)  # near the best rank-K change (float32 kept)


def test_full_warm_starts_each_module_from_its_latest_recorded_change():
    history = {("m.q", 1): 1.0, ("m.q", 3): 3.0, ("m.q", 2): 2.0, ("m.v", 1): 4.0}  # in no particular order, as a state may hold them
    state = {}
    for (module, round_number), value in history.items():
        state[delta_key(module, round_number, "left")] = np.zeros((4, 2), np.float32)
        state[delta_key(module, round_number, "right")] = np.full((2, 3), value, np.float32)
    latest = latest_change_rows(state)
    assert set(latest) == {"m.q", "m.v"}  # a module never changed gets no warm start
    assert latest["m.q"][0, 0] == 3.0 and latest["m.v"][0, 0] == 4.0  # the newest round's rows, not the last key seen


# --- per-layer renormalisation and client views ---
def test_a_layer_only_one_client_trained_is_that_clients_update_undiluted():
    rng = np.random.default_rng(0)
    deep = LoraSpec(tuple(SHAPES), (0, 1, 2), (2, 2, 2), 2.0)
    shallow = LoraSpec(tuple(SHAPES), (2,), (2,), 2.0)
    def tensors(spec):
        return {m + s: rng.normal(size=(shape_of(m)[0], 2) if s == B_SUFFIX else (2, shape_of(m)[1])).astype(np.float32)
                for m in MODULES if int(m.split(".layers.")[1].split(".")[0]) in spec.layers for s in (A_SUFFIX, B_SUFFIX)}
    updates = [ClientUpdate("deep", 10, deep, tensors(deep)), ClientUpdate("shallow", 1000, shallow, tensors(shallow))]
    for name in ("flora", "flexlora"):
        state = make_strategy(name).initial_state(initial_lora(rng), {})
        new = make_strategy(name).aggregate(state, updates, 1)
        mod = module(0, "self_attn.q_proj")
        solo = 2.0 * updates[0].tensors[mod + B_SUFFIX].astype(np.float64) @ updates[0].tensors[mod + A_SUFFIX]
        got = LowRank(base_deltas(new)[1][mod + ".left"], base_deltas(new)[1][mod + ".right"]).dense() if name == "flora" else new[mod + B_SUFFIX].astype(np.float64) @ new[mod + A_SUFFIX]
        assert close(got, solo)


@given(fleets, st.sampled_from(["hetlora", "flexlora", "lora-fair", "fedex-lora"]))
@settings(max_examples=20, deadline=None)
def test_client_view_divides_out_the_clients_scaling(params, name):
    fleet = make_fleet(*params, name)
    strategy = make_strategy(name)
    new = strategy.aggregate(fleet.state, fleet.updates, 1)
    for update in fleet.updates:
        view = strategy.client_view(new, ClientInfo(update.agent_id, update.spec))
        for mod in MODULES:
            if mod + B_SUFFIX not in update.tensors:
                assert mod + B_SUFFIX not in view
                continue
            rank = update.tensors[mod + B_SUFFIX].shape[1]
            assert view[mod + B_SUFFIX].shape == (shape_of(mod)[0], rank)
            assert np.allclose(update.spec.scaling * view[mod + B_SUFFIX], new[mod + B_SUFFIX][:, :rank], rtol=1e-5, atol=1e-6)


def test_base_changes_are_sent_once_and_caught_up_after_a_gap():
    fleet = make_fleet(3, 3, "flora")
    strategy = make_strategy("flora")
    state = fleet.state
    for round_number in (1, 2, 3):
        state = strategy.aggregate(state, fleet.updates, round_number)
    spec = fleet.updates[0].spec
    rounds_in = lambda view: sorted({int(k.split(".base_delta.")[1][:4]) for k in view})  # noqa: E731
    assert rounds_in(strategy.client_view(state, ClientInfo("c0", spec, base_version=2))) == [3]
    assert rounds_in(strategy.client_view(state, ClientInfo("c0", spec, base_version=0))) == [1, 2, 3]
    assert strategy.client_view(state, ClientInfo("c0", spec, base_version=3)) == {}


def test_unknown_strategy_and_bad_options_are_clear():
    with pytest.raises(StrategyError, match="choose one of fedit"):
        make_strategy("fedprox")
    with pytest.raises(StrategyError, match="solver"):
        make_strategy("lora-fair", solver="newton")
    with pytest.raises(StrategyError, match="lora-fair"):
        make_strategy("lora-fair", lamda=1)


def test_ce_lora_weights_minimise_dissimilarity_plus_kl_to_the_data_prior():
    """Each device's mixing weights (read back from its personal core: core_j = I + ½·E_jj puts w_ij on the
    diagonal) are the minimiser over the simplex of Σ_j w_j(1 − sim_ij) + T·KL(w ‖ p): no other point scores lower."""
    strategy, rank = make_strategy("ce-lora"), 4
    spec = LoraSpec(("q_proj",), (0,), (rank,), 1.0)
    key = module(0, "self_attn.q_proj") + C_SUFFIX
    state = {module(0, "self_attn.q_proj") + A_SUFFIX: np.zeros((rank, 20), np.float32), module(0, "self_attn.q_proj") + B_SUFFIX: np.zeros((12, rank), np.float32)}
    updates = [ClientUpdate(f"c{j}", 10 * (j + 1), spec, {key: (np.eye(rank) + 0.5 * np.diag(np.eye(rank)[j])).astype(np.float32)}, tuple(np.roll([5, 1, 1, 1], j)))
               for j in range(rank)]
    merged = strategy.aggregate(state, updates, 1)
    sims, prior = strategy.similarity(updates), np.array([u.num_examples for u in updates], float) / 100
    rng = np.random.default_rng(0)
    for i, update in enumerate(updates):
        weights = 2 * (np.diag(merged[f"{key}/{update.agent_id}"]) - 1)

        def objective(w, i=i):
            return float(w @ (1 - sims[i]) + strategy.temperature * np.sum(w * np.log(w / prior)))

        assert weights.sum() == pytest.approx(1, abs=1e-5)
        assert all(objective(weights) <= objective(rng.dirichlet(np.ones(rank))) + 1e-6 for _ in range(500))
