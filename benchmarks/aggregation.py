"""Server cost of aggregation at LLM scale.

1. FlexLoRA's SVD of Σ p_i s_i B_i A_i: fedge's factored form (two thin QRs and an R×R SVD) against the reference
   formulation (form the dense d×k sum, full SVD in float32 with torch), at d = k = 4096 and K = 10 clients with
   ranks 4–64. Checks both give the same singular values and the same rank-r truncations, and prints the speed-up.
2. Server time per round of every strategy on the same updates (one adapted module by default; ``--modules N``
   for N such modules, e.g. 64 for q_proj and v_proj on the 32 layers of a 7B model).
3. The server step at 7B geometry (``--large-clients``, default 100 devices of ranks 4–64 cycling, over
   ``--large-modules`` = 64 modules of d = k = ``--dim``): FlexLoRA, FedEx-LoRA and `full` with the randomized range finder
   (``fedge.strategies.sketch``) over every module, beside today's exact factored method timed on ``--exact-sample``
   modules and scaled to all of them (modules are independent), with the range finder's error against the exact
   truncation on those modules, and each step as a multiple of its floor on this machine (the join and the four
   float32 products alone, measured in the same run). The updates model a later round: every device began from the global (its top r_i
   directions, singular values 1/j) and moved by ``--local-change`` of that, in float16 as the wire delivers them
   (one set of factors serves every module: the cost does not depend on the values); `full`'s devices send the
   same factors as their factored round changes (K = r_i columns, as GaLore at rank r_i/2 would).

    python benchmarks/aggregation.py [--dim 4096] [--clients 10] [--modules 1] [--repeats 3] [--large-clients 100]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedge.strategies import STRATEGIES, ClientInfo, ClientUpdate, make_strategy
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, C_SUFFIX, CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, base_deltas, delta_key, lora_modules, product_terms, trained_modules
from fedge.strategies.factored import compress, stack, svd
from fedge.strategies.sketch import SketchSettings, StackBuffer, stacked, times_m, times_m_transposed
from fedge.wire import LoraSpec

RANKS = (4, 8, 16, 32, 64)
console = Console()


def best_of(repeats: int, work) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def client_factors(dim: int, clients: int, rng: np.random.Generator) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(p_i s_i, B_i, A_i) for ``clients`` clients cycling through ranks 4..64 (float32, like the wire)."""
    sizes = rng.integers(50, 500, size=clients)
    weights = sizes / sizes.sum()
    out = []
    for index in range(clients):
        rank = RANKS[index % len(RANKS)]
        scaling = 2.0 * 16 / rank
        out.append((float(weights[index] * scaling), (rng.normal(size=(dim, rank)) / np.sqrt(rank)).astype(np.float32), (rng.normal(size=(rank, dim)) / np.sqrt(dim)).astype(np.float32)))
    return out


def dense_reference(terms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    total = sum(c * torch.from_numpy(b) @ torch.from_numpy(a) for c, b, a in terms)
    return torch.linalg.svd(total, full_matrices=False)


def compare_flexlora(dim: int, clients: int, repeats: int) -> None:
    terms = client_factors(dim, clients, np.random.default_rng(0))
    factored_s, factored = best_of(repeats, lambda: svd(stack(terms)))
    dense_s, (u, s, vt) = best_of(1, lambda: dense_reference(terms))
    rank_sum = sum(b.shape[1] for _, b, _ in terms)
    u, s, vt = u.double().numpy(), s.double().numpy(), vt.double().numpy()
    sv_error = np.abs(factored.s - s[: len(factored.s)]).max() / s[0]
    worst = 0.0
    for rank in RANKS:
        reference = (u[:, :rank] * s[:rank]) @ vt[:rank]
        worst = max(worst, float(np.linalg.norm(factored.truncated(rank).dense() - reference) / np.linalg.norm(reference)))
    console.print(f"[bold]FlexLoRA SVD[/] d=k={dim}, K={clients}, ranks {'/'.join(str(RANKS[i % len(RANKS)]) for i in range(clients))} (R={rank_sum}), {torch.get_num_threads()} threads")
    console.print(f"  dense d×k sum + full SVD (torch float32): {dense_s:8.3f} s")
    console.print(f"  factored QR + R×R SVD (numpy float64):    {factored_s:8.3f} s   speed-up {dense_s / factored_s:.0f}×")
    console.print(f"  same result: max singular-value difference {sv_error:.1e} (relative to σ1); rank-r truncations r∈{RANKS} differ by ≤ {worst:.1e} (relative Frobenius)")
    if sv_error > 1e-4 or worst > 1e-3:
        raise SystemExit("factored and dense SVD disagree")


def updates_for(name: str, dim: int, clients: int, modules: int, rng: np.random.Generator) -> tuple[dict, list[ClientUpdate]]:
    strategy = make_strategy(name)
    names = [f"base_model.model.model.layers.{index}.self_attn.q_proj" for index in range(modules)]
    lora = {}
    for module in names:
        lora[module + A_SUFFIX] = (rng.normal(size=(max(RANKS), dim)) / np.sqrt(dim)).astype(np.float32)
        lora[module + B_SUFFIX] = np.zeros((dim, max(RANKS)), np.float32)
    state = strategy.initial_state(lora, {})
    updates = []
    for index in range(clients):
        rank = RANKS[index % len(RANKS)] if strategy.mixed_ranks else 16
        spec = LoraSpec(("q_proj",), tuple(range(modules)), (rank,) * modules, 2.0)
        tensors = {}
        for module in names:
            if strategy.recipe.sends == ("C",):
                tensors[module + C_SUFFIX] = (np.eye(rank) + 0.1 * rng.normal(size=(rank, rank))).astype(np.float32)
            elif strategy.recipe.sends == ("ΔW",):
                tensors[module + CHANGE_LEFT_SUFFIX] = rng.normal(size=(dim, 2 * rank)).astype(np.float32) / np.sqrt(rank)
                tensors[module + CHANGE_RIGHT_SUFFIX] = np.linalg.qr(rng.normal(size=(dim, 2 * rank)))[0].T.astype(np.float32)
            else:
                tensors[module + B_SUFFIX] = rng.normal(size=(dim, rank)).astype(np.float32) / np.sqrt(rank)
                if "A" in strategy.recipe.sends:
                    tensors[module + A_SUFFIX] = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(dim)
        updates.append(ClientUpdate(f"c{index}", int(rng.integers(50, 500)), spec, tensors, tuple(int(x) for x in rng.integers(1, 50, size=8))))
    return state, updates


def time_strategies(dim: int, clients: int, modules: int, repeats: int) -> None:
    table = Table(title=f"Server time per round: d=k={dim}, K={clients}, {modules} module(s), best of {repeats}")
    for column in ("strategy", "ranks", "aggregate", "client views", "per module"):
        table.add_column(column, justify="right" if column != "strategy" else "left")
    for name in STRATEGIES:
        state, updates = updates_for(name, dim, clients, modules, np.random.default_rng(1))
        strategy = make_strategy(name)
        aggregate_s, new = best_of(repeats, lambda: strategy.aggregate(state, updates, 1))
        views_s, _ = best_of(repeats, lambda: [strategy.client_view(new, ClientInfo(u.agent_id, u.spec)) for u in updates])
        ranks = "4–64" if strategy.mixed_ranks else "16 (one rank)"
        table.add_row(name, ranks, f"{aggregate_s:.3f} s", f"{views_s:.3f} s", f"{(aggregate_s + views_s) / modules:.3f} s")
    console.print(table)


def later_round(dim: int, clients: int, modules: int, local_change: float, rng: np.random.Generator) -> tuple[dict, list[ClientUpdate]]:
    """The global state (rank 64, singular values 1/j) and ``clients`` updates that began from it, over ``modules``
    modules sharing one set of factors, in float16 as the wire delivers them."""
    top = max(RANKS)
    left = np.linalg.qr(rng.standard_normal((dim, top)))[0] / np.arange(1, top + 1)
    rows = np.linalg.qr(rng.standard_normal((dim, top)))[0].T
    names = [f"base_model.model.model.layers.{index // 2}.self_attn.{'qv'[index % 2]}_proj" for index in range(modules)]
    state = {}
    for module in names:
        state[module + A_SUFFIX], state[module + B_SUFFIX] = rows.astype(np.float32), left.astype(np.float32)
    updates = []
    for index in range(clients):
        rank = RANKS[index % len(RANKS)]
        scaling = 16 / rank
        b = ((left[:, :rank] + local_change * rng.standard_normal((dim, rank)) / np.sqrt(dim)) / scaling).astype(np.float16)
        a = (rows[:rank] + local_change * rng.standard_normal((rank, dim)) / np.sqrt(dim)).astype(np.float16)
        spec = LoraSpec(("q_proj", "v_proj"), tuple(range(modules // 2)), (rank,) * (modules // 2), scaling * rank)
        tensors = {module + suffix: factor for module in names for suffix, factor in ((A_SUFFIX, a), (B_SUFFIX, b))}
        updates.append(ClientUpdate(f"c{index}", int(rng.integers(50, 500)), spec, tensors))
    return state, updates


def floor_of_range_finder(state: dict, updates: list[ClientUpdate], modules: int) -> tuple[float, float, float]:
    """(stacking, products, GFLOP/s): the range finder's floor per round on this machine, measured on one module and
    scaled to ``modules``: fedge's join of the float16 factors into stacked float32 copies, and the four float32
    products at the sketch's width (two passes, each through both factors) that any two-pass range finder needs;
    nothing else."""
    module, weighted = next(trained_modules(state, updates, A_SUFFIX))
    terms = product_terms(weighted, module)
    buffer = StackBuffer()
    stack_s, (left, right, weights) = best_of(3, lambda: stacked(terms, buffer))
    width = state[module + A_SUFFIX].shape[0] + SketchSettings().oversampling
    test, basis = torch.randn(width, right.shape[1]), torch.randn(width, left.shape[0])
    products_s, _ = best_of(3, lambda: (times_m_transposed(test, left, right, weights), times_m(basis, left, right, weights)))
    flop = 4 * 2 * width * left.shape[0] * left.shape[1]
    return stack_s * modules, products_s * modules, flop / products_s / 1e9


def server_step_at_scale(dim: int, clients: int, modules: int, sample: int, local_change: float) -> None:
    state, updates = later_round(dim, clients, modules, local_change, np.random.default_rng(2))
    rank_sum = sum(RANKS[index % len(RANKS)] for index in range(clients))
    console.print(f"[bold]Server step at scale[/] {modules} modules of d = k = {dim}, {clients} devices of ranks 4–64 (Σ r_i = {rank_sum}), "
                  f"local change {local_change} of the global; today's exact method timed on {sample} module(s) and scaled ×{modules / sample:g}")
    stack_s, products_s, rate = floor_of_range_finder(state, updates, modules)
    floor = stack_s + products_s
    console.print(f"  floor on this machine: stacking the float16 factors as float32 {stack_s:.2f} s + the range finder's four float32 products "
                  f"{products_s:.2f} s ({rate:.0f} GFLOP/s) = {floor:.2f} s a round, before anything else")
    table = Table()
    table.add_column("strategy", no_wrap=True, min_width=10)
    for column in ("today (exact), per round", "range finder, per round", "speed-up", "gap to the exact truncation", "residual missed vs best rank-R", "× floor"):
        table.add_column(column, justify="right")
    sampled = dict(list(trained_modules(state, updates, A_SUFFIX))[:sample])
    rank = state[next(iter(sampled)) + A_SUFFIX].shape[0]
    exact_s, exact = best_of(1, lambda: {module: svd(stack(product_terms(weighted, module))).truncated(rank) for module, weighted in sampled.items()})
    fast_s, merged = best_of(1, lambda: make_strategy("flexlora").aggregate(state, updates, 1))
    gap = max(float(np.linalg.norm(merged[m + B_SUFFIX] @ merged[m + A_SUFFIX] - exact[m].dense()) / np.linalg.norm(exact[m].dense())) for m in sampled)
    table.add_row("flexlora", f"{exact_s * modules / sample:.1f} s", f"{fast_s:.2f} s", f"{exact_s * modules / sample / fast_s:.0f}×", f"{gap:.1e}", "—", f"{fast_s / floor:.2f}")
    sample_state = {key: value for key, value in state.items() if key.rsplit(".lora_", 1)[0] in sampled}
    exact_s, exact_state = best_of(1, lambda: make_strategy("fedex-lora", exact_residual_rank=10**9).aggregate(sample_state, updates, 1))
    fast_s, merged = best_of(1, lambda: make_strategy("fedex-lora").aggregate(state, updates, 1))
    missed = []
    for module in sampled:
        full, cut = base_deltas(exact_state)[1], base_deltas(merged)[1]
        residual = full[module + ".left"] @ full[module + ".right"]
        best = compress(stack([(1.0, full[module + ".left"], full[module + ".right"])]))
        best_rank = svd(best).truncated(rank).dense()
        missed.append(float(np.linalg.norm(residual - cut[module + ".left"] @ cut[module + ".right"]) / np.linalg.norm(residual - best_rank)))
    table.add_row("fedex-lora", f"{exact_s * modules / sample:.1f} s", f"{fast_s:.2f} s", f"{exact_s * modules / sample / fast_s:.0f}×", "—", f"{max(missed):.4f}×", f"{fast_s / floor:.2f}")
    changes = [replace(update, tensors={module + suffix: update.tensors[module + key] * (update.spec.scaling if key == B_SUFFIX else 1) for module in lora_modules(state)
                                         for suffix, key in ((CHANGE_LEFT_SUFFIX, B_SUFFIX), (CHANGE_RIGHT_SUFFIX, A_SUFFIX))}) for update in updates]
    exact_s, exact = best_of(1, lambda: {module: compress(stack([(weight, u.tensors[module + CHANGE_LEFT_SUFFIX], u.tensors[module + CHANGE_RIGHT_SUFFIX]) for u, weight in weighted]))
                                        for module, weighted in list(trained_modules(state, changes, CHANGE_LEFT_SUFFIX))[:sample]})
    previous = {**state, **{delta_key(module, 1, part): state[module + key] for module in lora_modules(state) for part, key in (("left", B_SUFFIX), ("right", A_SUFFIX))}}  # last round's change: the global directions
    fast_s, merged = best_of(1, lambda: make_strategy("full").aggregate(previous, changes, 2))
    kept = base_deltas(merged)[2]
    gap = max(float(np.linalg.norm(kept[m + ".left"] @ kept[m + ".right"] - svd(exact[m]).truncated(rank).dense()) / np.linalg.norm(svd(exact[m]).truncated(rank).dense())) for m in exact)
    table.add_row("full", f"{exact_s * modules / sample:.1f} s", f"{fast_s:.2f} s", f"{exact_s * modules / sample / fast_s:.0f}×", f"{gap:.1e}", "—", f"{fast_s / floor:.2f}")
    console.print(table)
    console.print("FedEx-LoRA today sends the exact residual (stacked rank Σ r_i + R); beyond exact_residual_rank it sends the residual's top R directions, "
                  "whose error is the last column's multiple of the best rank-R correction's. `full` averages the devices' factored round changes (the same "
                  "factors here, sent as d×K and K×k): exact below exact_change_rank, the top max K directions of the average beyond it.")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--modules", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-clients", type=int, default=100)
    parser.add_argument("--large-modules", type=int, default=64)
    parser.add_argument("--exact-sample", type=int, default=2)
    parser.add_argument("--local-change", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="d = k = 512, 4 clients (40 at scale, 4 modules), one repeat: checks the benchmark still runs")
    args = parser.parse_args()
    if args.quick:
        args.dim, args.clients, args.repeats, args.large_clients, args.large_modules, args.exact_sample = 512, 4, 1, 40, 4, 1
    compare_flexlora(args.dim, args.clients, args.repeats)
    time_strategies(args.dim, args.clients, args.modules, args.repeats)
    server_step_at_scale(args.dim, args.large_clients, args.large_modules, args.exact_sample, args.local_change)


if __name__ == "__main__":
    main()
