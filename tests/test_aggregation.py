import numpy as np
import pytest

from coordinator.aggregation import ClientFactors, client_view, expected_shapes, fedit

D, K, R = 6, 5, 8
SITES = [f"base_model.model.model.layers.{layer}.self_attn.q_proj" for layer in (2, 3)]


def _keys(layers=(2, 3)):
    return [f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{ab}.weight" for layer in layers for ab in "AB"]


def _global(rng):
    return {key: rng.normal(size=(R, K) if key.endswith("A.weight") else (D, R)).astype(np.float32) for key in _keys()}


def _client(rng, rank, layers, n, alpha=None):
    """A client of ``rank`` (an int, or one rank per layer) with s = alpha / r (default alpha = 2r, so s = 2)."""
    ranks = dict(zip(layers, rank if isinstance(rank, tuple) else (rank,) * len(layers)))
    tensors = {}
    for key in _keys(layers):
        r = ranks[int(key.split(".layers.")[1].split(".")[0])]
        tensors[key] = rng.normal(size=(r, K) if key.endswith("A.weight") else (D, r)).astype(np.float32)
    scaling = 2.0 if alpha is None else alpha / max(ranks.values())
    return ClientFactors(f"c{rank}-{n}", n, scaling, tensors)


def test_same_rank_fedit_is_the_weighted_mean_of_factors():
    rng = np.random.default_rng(0)
    clients = [_client(rng, R, (2, 3), n, alpha=R) for n in (10, 30)]
    merged = fedit(_global(rng), clients)
    for key in _keys():
        expected = 0.25 * clients[0].tensors[key] + 0.75 * clients[1].tensors[key]
        np.testing.assert_allclose(merged[key], expected, rtol=1e-6)


def test_heterogeneous_ranks_are_zero_padded_with_scaling_folded_into_b():
    rng = np.random.default_rng(1)
    small, large = _client(rng, 2, (2, 3), 10), _client(rng, 8, (2, 3), 10)
    merged = fedit(_global(rng), [small, large])
    a_key, b_key = _keys()[:2]
    np.testing.assert_allclose(merged[a_key][:2], 0.5 * (small.tensors[a_key] + large.tensors[a_key][:2]), rtol=1e-6)
    np.testing.assert_allclose(merged[a_key][2:], 0.5 * large.tensors[a_key][2:], rtol=1e-6)
    # both clients use alpha = 2r, so s = 2 for each; the global keeps s = 1 with s folded into B
    np.testing.assert_allclose(merged[b_key][:, 2:], 0.5 * 2.0 * large.tensors[b_key][:, 2:], rtol=1e-6)


def test_layers_are_renormalised_over_the_clients_that_trained_them():
    rng = np.random.default_rng(2)
    deep, shallow = _client(rng, R, (2, 3), 30, alpha=R), _client(rng, R, (3,), 10, alpha=R)
    previous = _global(rng)
    merged = fedit(previous, [deep, shallow])
    layer2_a = _keys((2,))[0]
    np.testing.assert_allclose(merged[layer2_a], deep.tensors[layer2_a], rtol=1e-6)  # weight 1, not 0.75
    layer3_a = _keys((3,))[0]
    np.testing.assert_allclose(merged[layer3_a], 0.75 * deep.tensors[layer3_a] + 0.25 * shallow.tensors[layer3_a], rtol=1e-6)


def test_untouched_layers_keep_their_previous_value():
    rng = np.random.default_rng(3)
    previous = _global(rng)
    merged = fedit(previous, [_client(rng, R, (3,), 5)])
    for key in _keys((2,)):
        np.testing.assert_array_equal(merged[key], previous[key])


@pytest.mark.parametrize("rank, alpha", [(2, 4.0), (4, 32.0), (8, 8.0)])
def test_a_lone_client_gets_back_exactly_what_it_sent(rank, alpha):
    rng = np.random.default_rng(4)
    client = _client(rng, rank, (2, 3), 7, alpha)
    merged = fedit(_global(rng), [client])
    view = client_view(merged, {2: rank, 3: rank}, alpha / rank)
    for key in _keys():
        np.testing.assert_allclose(view[key], client.tensors[key], rtol=1e-6)


def test_effective_update_is_preserved_through_the_global_layout():
    rng = np.random.default_rng(5)
    client = _client(rng, 4, (2, 3), 7, alpha=16.0)
    merged = fedit(_global(rng), [client])
    a_key, b_key = _keys()[:2]
    effective = client.scaling * client.tensors[b_key] @ client.tensors[a_key]
    np.testing.assert_allclose(merged[b_key] @ merged[a_key], effective, rtol=1e-5)


def test_expected_shapes_follow_the_client_rank_on_each_layer():
    rng = np.random.default_rng(6)
    shapes = expected_shapes(_global(rng), {3: 3})
    assert shapes == {_keys((3,))[0]: (3, K), _keys((3,))[1]: (D, 3)}
    profile = expected_shapes(_global(rng), {2: 2, 3: 8})
    assert profile[_keys((2,))[0]] == (2, K) and profile[_keys((3,))[1]] == (D, 8)


def test_a_rank_profile_round_trips_layer_by_layer():
    rng = np.random.default_rng(7)
    client = _client(rng, (4, 8), (2, 3), 5)  # LEGEND-style: rank 4 on layer 2, 8 on layer 3
    merged = fedit(_global(rng), [client])
    view = client_view(merged, {2: 4, 3: 8}, client.scaling)
    for key in _keys():
        np.testing.assert_allclose(view[key], client.tensors[key], rtol=1e-6)
    a_key, b_key = _keys((2,))
    np.testing.assert_array_equal(merged[a_key][4:], 0.0)  # padded above the client's rank on that layer
