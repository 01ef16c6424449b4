"""Server cost of aggregation at LLM scale.

1. FlexLoRA's SVD of Σ p_i s_i B_i A_i: fedge's factored form (two thin QRs and an R×R SVD) against the reference
   formulation (form the dense d×k sum, full SVD in float32 with torch), at d = k = 4096 and K = 10 clients with
   ranks 4–64. Checks both give the same singular values and the same rank-r truncations, and prints the speed-up.
2. Server time per round of every strategy on the same updates (one adapted module by default; ``--modules N``
   for N such modules, e.g. 64 for q_proj and v_proj on the 32 layers of a 7B model).

    python benchmarks/aggregation.py [--dim 4096] [--clients 10] [--modules 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedge.strategies import STRATEGIES, ClientInfo, ClientUpdate, make_strategy
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, C_SUFFIX, FULL_SUFFIX
from fedge.strategies.factored import stack, svd
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
    weights = {module: rng.normal(size=(dim, dim)).astype(np.float32) for module in names} if name == "full" else {}
    state = strategy.initial_state(lora, weights)
    updates = []
    for index in range(clients):
        rank = RANKS[index % len(RANKS)] if strategy.mixed_ranks else 16
        spec = LoraSpec(("q_proj",), tuple(range(modules)), (rank,) * modules, 2.0)
        tensors = {}
        for module in names:
            if strategy.recipe.sends == ("C",):
                tensors[module + C_SUFFIX] = (np.eye(rank) + 0.1 * rng.normal(size=(rank, rank))).astype(np.float32)
            elif strategy.recipe.sends == ("W",):
                tensors[module + FULL_SUFFIX] = rng.normal(size=(dim, dim)).astype(np.float32)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--modules", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="d = k = 512, 4 clients, one repeat: checks the benchmark still runs")
    args = parser.parse_args()
    if args.quick:
        args.dim, args.clients, args.repeats = 512, 4, 1
    compare_flexlora(args.dim, args.clients, args.repeats)
    time_strategies(args.dim, args.clients, args.modules, args.repeats)


if __name__ == "__main__":
    main()
