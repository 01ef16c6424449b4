"""Aggregation strategies by name; ``base`` holds the interface and each module states its maths."""

from __future__ import annotations

from fedge.strategies.base import ClientInfo, ClientRecipe, ClientUpdate, GlobalParts, State, Strategy, StrategyError
from fedge.strategies.ce_lora import CELoRA
from fedge.strategies.fedex_lora import FedExLoRA
from fedge.strategies.fedit import FedIT
from fedge.strategies.ffa_lora import FFALoRA
from fedge.strategies.flexlora import FlexLoRA
from fedge.strategies.flora import FLoRA
from fedge.strategies.full import FullWeights
from fedge.strategies.hetlora import HetLoRA
from fedge.strategies.lora_fair import LoRAFAIR

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedIT, FFALoRA, HetLoRA, FlexLoRA, FLoRA, FedExLoRA, LoRAFAIR, CELoRA, FullWeights)}


def make_strategy(name: str, seed: int = 0, **options) -> Strategy:
    """The strategy called ``name`` with its options; ``StrategyError`` names the choices or the bad option."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](seed=seed, **options)
    except TypeError as error:
        raise StrategyError(f"{name}: {error}") from None


def recipe_for(name: str) -> ClientRecipe:
    """What a client trains and sends under ``name``."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name].recipe


__all__ = ["STRATEGIES", "ClientInfo", "ClientRecipe", "ClientUpdate", "GlobalParts", "State", "Strategy", "StrategyError", "make_strategy", "recipe_for"]
