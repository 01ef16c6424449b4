"""What a device trains under each strategy, built from the strategy's ``ClientRecipe``.

* ``lora``: peft LoRA from the ``LoraSpec``; with ``shared_a`` A starts from the run's shared seed (FFA-LoRA, and
  frozen there), with ``reinit_each_round`` it starts afresh every round (FLoRA).
* ``tri``: CE-LoRA's B·C·A — peft LoRA plus an r×r core per module (initialised to I) applied between A and B.
* ``full``: no adapter; the target weights of the assigned layers are trained themselves (GaLore).

Changes to the frozen weights (FLoRA's stacked updates, FedEx-LoRA's residuals) arrive as factored ``base_delta``
entries. On an fp32/16-bit base they are added to the weight in place. On a 4/8-bit bitsandbytes base they are NOT
merged and re-quantised (an NF4 step is far coarser than one round's change, which rounding would mostly erase);
they are kept as one dense frozen matrix per changed module in the compute dtype and added by a forward hook.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from fedge.lora import build_lora_model, parse_adapter_key
from fedge.round_change import factored_change
from fedge.strategies import ClientRecipe, GlobalParts
from fedge.strategies.base import A_SUFFIX, B_SUFFIX, C_SUFFIX, CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, base_deltas, layer_index, layer_of, shared_lora_a
from fedge.strategies.full import change_rank
from fedge.wire import LoraSpec

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"
PROJECTOR_REFRESH_STEPS = 50  # GaLore's update_proj_gap
MISSED_WARNING = 1e-4  # a GaLore change is exact at its rank; more than this missed means it was not one
log = logging.getLogger(__name__)


def attach(model, spec: LoraSpec, recipe: ClientRecipe, run_seed: int, seed: int):
    """The model to train under ``recipe``: peft-wrapped for lora/tri, the plain model with its target weights
    trainable for full."""
    if recipe.adapter == "full":
        model.requires_grad_(False)
        for name, module in _targets(model, spec):
            if not module.weight.is_floating_point():
                raise ValueError(f"full-weight training needs a 16/32-bit base, but {name} is quantized ({type(module).__name__})")
            module.weight.requires_grad_(True)
        return model
    peft_model = build_lora_model(model, spec, seed=seed)
    for name, layer in lora_layers(peft_model):
        a = layer.lora_A[ADAPTER].weight
        if recipe.shared_a:
            with torch.no_grad():
                a.copy_(torch.from_numpy(shared_lora_a(name, a.shape[0], a.shape[1], run_seed)))
        a.requires_grad_("A" in recipe.trains)
        if recipe.adapter == "tri":
            _add_core(layer.lora_B[ADAPTER], a.shape[0])
    return peft_model


def lora_layers(model) -> list[tuple[str, LoraLayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer) and ADAPTER in module.lora_A]


def save_adapter(model, directory: Path) -> None:
    """Write a trained model as plain PEFT (or, trained in full, a plain checkpoint) that loads without fedge:
    a tri-factor core C folds into its B (ΔW = s·B·C·A = s·(BC)·A)."""
    state = model.state_dict()
    for name, layer in lora_layers(model):
        core = getattr(layer.lora_B[ADAPTER], "core", None)
        if core is not None:
            state[f"{name}.lora_B.{ADAPTER}.weight"] = (layer.lora_B[ADAPTER].weight @ core).detach()
            del state[f"{name}.lora_B.{ADAPTER}.core"]
    model.save_pretrained(directory, state_dict=state)


def _add_core(lora_b: torch.nn.Module, rank: int) -> None:
    lora_b.register_parameter("core", torch.nn.Parameter(torch.eye(rank, dtype=lora_b.weight.dtype, device=lora_b.weight.device)))
    lora_b.register_forward_pre_hook(lambda module, args: (args[0] @ module.core.T.to(args[0].dtype),) + tuple(args[1:]))


def _targets(model, spec: LoraSpec) -> list[tuple[str, torch.nn.Module]]:
    """(wire module name, module) of every target linear on the spec's layers of a plain model."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and _targeted(name, spec.target_modules) and layer_index(name) in spec.layer_ranks:
            out.append((PEFT_PREFIX + name, module))
    return out


def _targeted(name: str, target_modules: tuple[str, ...]) -> bool:
    """Whether a module path matches a target as peft matches it: the whole name or a dotted suffix."""
    return any(name == target or name.endswith("." + target) for target in target_modules)


def round_start(model, spec: LoraSpec, recipe: ClientRecipe) -> dict[str, torch.Tensor]:
    """The trained weights as a full-weight round begins, copied to the CPU: the round's change is taken against
    them, and the next round starts from them again (empty for the adapter recipes)."""
    if recipe.adapter != "full":
        return {}
    return {name: module.weight.detach().to("cpu", copy=True) for name, module in _targets(model, spec)}


def restore(model, spec: LoraSpec, start: dict[str, torch.Tensor]) -> None:
    """Put the weights a full-weight round began with back, before the base changes since then are applied."""
    with torch.no_grad():
        for name, module in _targets(model, spec):
            if name in start:
                module.weight.copy_(start[name].to(module.weight.device))


def upload(model, spec: LoraSpec, recipe: ClientRecipe, start: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """The tensors this device sends: exactly the recipe's ``sends``, in the wire's fp16 (torch casts it several
    times faster than numpy would in the codec). Full weights send their change since ``start`` (``round_start``),
    factored at twice the layer's GaLore rank."""
    out: dict[str, np.ndarray] = {}
    if recipe.adapter == "full":
        for name, module in _targets(model, spec):
            change = factored_change(start[name], module.weight, change_rank(spec.layer_ranks[layer_of(name)]))
            if change.missed > MISSED_WARNING:
                log.warning("%s: its factors miss %.1e of this round's change (GaLore not projecting it?)", name, change.missed)
            out[name + CHANGE_LEFT_SUFFIX], out[name + CHANGE_RIGHT_SUFFIX] = _wire(change.left), _wire(change.right)
        return out
    if "A" in recipe.sends or "B" in recipe.sends:
        wanted = tuple(suffix for factor, suffix in (("A", A_SUFFIX), ("B", B_SUFFIX)) if factor in recipe.sends)
        out.update({key: _wire(value) for key, value in get_peft_model_state_dict(model).items() if key.endswith(wanted)})
    if "C" in recipe.sends:
        out.update({name + C_SUFFIX: _wire(layer.lora_B[ADAPTER].core) for name, layer in lora_layers(model)})
    return out


def _wire(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float16).cpu().numpy()


def apply_view(model, view: dict[str, np.ndarray], applied_rounds: set[int]) -> int | None:
    """Load a received state: factors, cores or weights by key, plus base changes of rounds not in
    ``applied_rounds`` (which it extends). Returns the lowest layer whose frozen weights changed, or None."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    lowest = None
    for round_number, parts in base_deltas(view).items():
        if round_number in applied_rounds:
            continue
        for key in sorted(k for k in parts if k.endswith(".left")):
            name = key[: -len(".left")]
            _add_to_base(modules, name, parts[key], parts[name + ".right"])
            lowest = layer_of(name) if lowest is None else min(lowest, layer_of(name))
        applied_rounds.add(round_number)
    for key, value in view.items():
        if ".base_delta." in key:
            continue
        target = _parameter_for(key, params)
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"{key}: received shape {tuple(value.shape)}, this adapter has {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)).to(target.dtype))
    return lowest


def apply_frozen_changes(model, parts: GlobalParts, applied_rounds: set[int]) -> int | None:
    """Put the frozen-weight side of a strategy's global parts into a peft model: base changes of rounds not in
    ``applied_rounds`` (which it extends). Returns the lowest layer whose frozen weights changed, or None."""
    return apply_view(model, parts.base_changes, applied_rounds)


def _parameter_for(key: str, params: dict[str, torch.nn.Parameter]) -> torch.nn.Parameter:
    if key.endswith(C_SUFFIX):
        name = key[: -len(C_SUFFIX)] + f".lora_B.{ADAPTER}.core"
    else:
        parse_adapter_key(key)
        name = key[: -len(".weight")] + f".{ADAPTER}.weight"
    if name not in params:
        raise ValueError(f"{key}: this device does not adapt that module")
    return params[name]


def _add_to_base(modules: dict[str, torch.nn.Module], name: str, left: np.ndarray, right: np.ndarray) -> None:
    module = modules.get(name) or modules.get(name[len(PEFT_PREFIX):])
    if module is None:
        raise ValueError(f"base change for unknown module {name}")
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    change = torch.from_numpy(left.astype(np.float32)) @ torch.from_numpy(right.astype(np.float32))
    weight = base.weight
    if isinstance(base, Conv1D):  # GPT-2 stores its weights in×out
        change = change.T
    if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) and weight.shape == change.shape:
        with torch.no_grad():
            weight.add_(change.to(weight.device, weight.dtype))
        return
    # quantized (bitsandbytes) base: keep the change beside it, dense and frozen
    compute = torch.bfloat16 if weight.device.type == "cuda" else torch.float32
    if getattr(base, "fedge_base_change", None) is None:
        base.register_buffer("fedge_base_change", torch.zeros(change.shape, dtype=compute, device=weight.device))
        base.register_forward_hook(lambda mod, args, out: out + (args[0].to(mod.fedge_base_change.dtype) @ mod.fedge_base_change.T).to(out.dtype))
    base.fedge_base_change.add_(change.to(base.fedge_base_change.device, compute))


def restart_lora(model, seed: int) -> None:
    """FLoRA: A random (peft's Kaiming init), B = 0 on every adapted module."""
    torch.manual_seed(seed)
    for _, layer in lora_layers(model):
        layer.reset_lora_parameters(ADAPTER, True)


def galore_groups(model, spec: LoraSpec, scale: float = 0.25, round_steps: int = 1) -> list[dict]:
    """Optimizer groups for GaLore: each trained matrix projected to its layer's planned rank, the projected update
    scaled by ``scale``. Projectors are refreshed every 50 steps, or every ``round_steps`` where a round is longer:
    no round crosses two refreshes, so its change has at most twice the rank (``change_rank``)."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, module in _targets(model, spec):
        groups.setdefault(spec.layer_ranks[layer_of(name)], []).append(module.weight)
    gap = max(PROJECTOR_REFRESH_STEPS, round_steps)
    return [{"params": params, "rank": rank, "update_proj_gap": gap, "scale": scale, "proj_type": "std"} for rank, params in sorted(groups.items())]
