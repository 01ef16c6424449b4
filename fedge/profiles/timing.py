"""Step time and bytes per round, predicted from the model's shape, the device's throughput and the wire format.

Time: a training step runs the trained top-D layers forward and backward. The frozen layers below them run once
per example, the first time a round trains on it (``prefix_flops``): a first round caches the rows it trains on,
and the agent caches the next round's rows while it waits for the coordinator, so later rounds find them cached.
Examples beyond the cache's bound are recomputed in every step that draws them. Forward costs 2 FLOPs per weight per token
in the linear layers plus causal attention (2·s·q_dim per token); the backward through frozen weights needs only
the input gradients, one forward's worth again, with attention's backward at twice its forward; LoRA adds
2·r·(out+in) per token forward and twice that backward. Gradient checkpointing runs the forward once more. The
step time is FLOPs / (throughput × efficiency) + a per-layer cost (kernel launches, Python), both calibrated per
backend and quantization.

Bytes: a strategy's wire format says which tensors cross the network each way; fedge sends them as fp16 in a
safetensors body behind a JSON header (``fedge.wire.codec``).
"""

from __future__ import annotations

from functools import lru_cache

from fedge.profiles.calibration import Calibration
from fedge.profiles.memory import TrainingSetup
from fedge.wire import DeviceProfile
from fedge.profiles.model_shape import ModelShape

WIRE_ELEMENT_BYTES = 2  # fp16 on the wire
TENSOR_HEADER_BYTES = 150  # safetensors entry + JSON header share per tensor (measured against the codec)
MESSAGE_HEADER_BYTES = 600


@lru_cache(maxsize=4096)
def _layer_flops_per_token(shape: ModelShape, seq_len: int, rank: int, target_modules: tuple[str, ...]) -> tuple[float, float, float]:
    """(frozen linears, causal attention, LoRA) forward FLOPs per token of one decoder layer."""
    attention = 2 * seq_len * shape.num_heads * shape.head_dim  # causal: half of QKᵀ and AV
    lora = 2 * rank * sum(sum(shape.module_dims(module)) for module in target_modules)
    return 2 * shape.linear_params_per_layer, attention, lora


def step_flops(shape: ModelShape, setup: TrainingSetup) -> float:
    """FLOPs of one optimizer step over the trained layers, plus the prefix of the rows the cache cannot keep."""
    total = _trained_flops_per_token(shape, setup.seq_len, setup.ranks, setup.target_modules, setup.gradient_checkpointing)
    # instruct: the output layer on answer tokens, forward, recomputed in backward, and its input gradient
    output = 6 * shape.vocab_size * shape.hidden_size * setup.answer_share
    return setup.sequences * setup.seq_len * (total + output) + prefix_flops(shape, setup, setup.batch_size * setup.uncached_fraction)


@lru_cache(maxsize=65536)
def _trained_flops_per_token(shape: ModelShape, seq_len: int, ranks: tuple[int, ...], target_modules: tuple[str, ...], checkpointing: bool) -> float:
    """Forward and backward FLOPs per token of the trained layers."""
    total = 0.0
    for rank in ranks:
        linear, attention, lora = _layer_flops_per_token(shape, seq_len, rank, target_modules)
        forward = linear + attention + lora
        backward = linear + 2 * attention + 2 * lora  # input gradients only through the frozen weights
        total += forward * (2 if checkpointing else 1) + backward
    return total


def prefix_flops(shape: ModelShape, setup: TrainingSetup, rows: float) -> float:
    """FLOPs of running the frozen layers below the adapter for ``rows`` examples (each of its sequences)."""
    linear, attention, _ = _layer_flops_per_token(shape, setup.seq_len, 0, ())
    return rows * setup.sequences_per_example * setup.seq_len * min(setup.layers) * (linear + attention)


def device_gflops(profile: DeviceProfile, quantization: str) -> float:
    """The throughput a quantization runs at: the 16-bit (tensor-core) rate for 16-bit and k-bit compute on a GPU."""
    if profile.cuda_device_name and quantization != "fp32" and profile.fp16_gflops:
        return profile.fp16_gflops
    if not profile.gflops:
        raise ValueError(f"{profile.name}: no throughput figure (gflops) in its profile")
    return profile.gflops


def predict_step_seconds(shape: ModelShape, setup: TrainingSetup, gflops: float, calibration: Calibration) -> float:
    efficiency = calibration.efficiency(setup.quantization)
    return step_flops(shape, setup) / (gflops * 1e9 * efficiency) + calibration.per_layer_seconds * setup.depth


def predict_prefix_seconds(shape: ModelShape, setup: TrainingSetup, rows: float, gflops: float, calibration: Calibration) -> float:
    """Time to cache the frozen prefix of ``rows`` examples (a first round: the rows it trains on)."""
    return prefix_flops(shape, setup, rows) / (gflops * 1e9 * calibration.efficiency(setup.quantization))


# --- bytes on the wire -------------------------------------------------------------------------------------------

def wire_tensor_shapes(strategy: str, shape: ModelShape, setup: TrainingSetup, fleet_rank_sum: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(uplink, downlink) tensor shapes per round for one client under ``strategy``.

    ``fleet_rank_sum`` is Σ r_i over the round's clients on a layer, which sizes FLoRA's stacked downlink.
    """
    up: list[tuple[int, int]] = []
    down: list[tuple[int, int]] = []
    for rank in setup.ranks:
        for module in setup.target_modules:
            out, inp = shape.module_dims(module)
            factors = [(rank, inp), (out, rank)]
            if strategy in ("fedit", "hetlora", "flexlora", "lora-fair", "legend", "hierfedlora"):
                up += factors
                down += factors
            elif strategy == "ffa-lora":  # A frozen at a shared seed: only B moves
                up.append((out, rank))
                down.append((out, rank))
            elif strategy == "ce-lora":  # only the r×r core
                up.append((rank, rank))
                down.append((rank, rank))
            elif strategy == "flora":  # the stacked update of every client comes back
                up += factors
                down += [(fleet_rank_sum, inp), (out, fleet_rank_sum)]
            elif strategy == "fedex-lora":  # averaged factors plus the factored residual
                up += factors
                down += factors + [(fleet_rank_sum + rank, inp), (out, fleet_rank_sum + rank)]
            elif strategy == "full":  # the round's change at twice the GaLore rank up, the fleet's averaged change down
                up += [(2 * rank, inp), (out, 2 * rank)]
                down += [(2 * fleet_rank_sum, inp), (out, 2 * fleet_rank_sum)]
            else:
                raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(WIRE_STRATEGIES)}")
    return up, down


FLEET_RANK_SUM_STRATEGIES = ("flora", "fedex-lora", "full")  # their downlink grows with the fleet's rank sum
WIRE_STRATEGIES = ("fedit", "hetlora", "flexlora", "lora-fair", "legend", "hierfedlora", "ffa-lora", "ce-lora", "flora", "fedex-lora", "full")


def message_bytes(shapes: list[tuple[int, int]]) -> int:
    return MESSAGE_HEADER_BYTES + sum(rows * cols * WIRE_ELEMENT_BYTES + TENSOR_HEADER_BYTES for rows, cols in shapes)


def predict_round_bytes(strategy: str, shape: ModelShape, setup: TrainingSetup, fleet_rank_sum: int = 0) -> tuple[int, int]:
    """(bytes up, bytes down) one client moves per round."""
    return _round_bytes(strategy, shape, setup.ranks, setup.target_modules, fleet_rank_sum)


@lru_cache(maxsize=65536)
def _round_bytes(strategy: str, shape: ModelShape, ranks: tuple[int, ...], target_modules: tuple[str, ...], fleet_rank_sum: int) -> tuple[int, int]:
    setup = TrainingSetup("fp32", tuple(range(len(ranks))), ranks, target_modules, 1, 1)  # the bytes depend on nothing else
    up, down = wire_tensor_shapes(strategy, shape, setup, fleet_rank_sum)
    return message_bytes(up), message_bytes(down)


UNKNOWN_LINK_MBPS = 10.0  # a link nobody measured


def transfer_seconds(bytes_up: int, bytes_down: int, profile: DeviceProfile) -> float:
    """Time on the device's links; a link without a figure is taken as ``UNKNOWN_LINK_MBPS``."""
    up = profile.uplink_mbps or UNKNOWN_LINK_MBPS
    down = profile.downlink_mbps or UNKNOWN_LINK_MBPS
    return bytes_up * 8 / (up * 1e6) + bytes_down * 8 / (down * 1e6)

