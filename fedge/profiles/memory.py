"""Peak training memory of fedge's LoRA trainer, predicted from the model's shape alone.

    peak = base weights + adapter state + activations + cached prefix states + framework overhead

* **Base weights**: NF4 with double quantization packs the per-layer linear weights at 0.5 byte + one 8-bit absmax
  per 64 weights + one fp32 scale per 256 absmax (≈0.516 byte/param); INT8 at 1 byte + one fp32 scale per output
  row. bitsandbytes leaves embeddings and norms alone, and peft's ``prepare_model_for_kbit_training`` upcasts them
  to fp32. 16-bit and 32-bit bases hold every parameter at 2 or 4 bytes.
* **Adapter state**: LoRA parameters (Σ over layers of r_l · Σ over target modules of (out + in)) at fp32 weight +
  fp32 gradient + optimizer state (AdamW: two fp32 moments; SGD: none). peft keeps adapters in fp32 on every base.
* **Activations**: what autograd keeps per token of each trained layer (counted below), times a factor calibrated
  per backend for what the count misses (allocator slack, backward temporaries), fitted separately for
  checkpointed training, whose recomputation allocates in a different pattern, and separately for the part LoRA on
  the attention output and MLP projections adds (measured at 2.9× its saved tensors where the rest costs 2×:
  backward temporaries of the MLP's width and the heap holes they leave). fedge runs attention through
  PyTorch's sdpa kernels, which never store the s×s score matrix, so there is no quadratic term. With gradient
  checkpointing only each trained layer's input is kept, plus one layer's activations while it is recomputed.
* **Cached prefix**: the trainer runs the frozen layers below the adapter once per example, the first time a round
  trains on it, and keeps the output of at most ``cached_examples`` examples (× seq × hidden); the planner bounds
  that number (``PlannerOptions.prefix_cache_mib``), and examples beyond it are recomputed per step
  (``fedge.profiles.timing``).
* **Output layer** (``instruct``): the loss runs the full-vocabulary output layer on the answer tokens
  (``answer_share`` of a batch's tokens) in chunks of ``LOSS_CHUNK_TOKENS`` whose logits are recomputed during
  backward, so at most one chunk's logits live at once: recomputed logits, their fp32 copy, the softmax and its
  gradient (``LOGIT_BYTES`` per logit), plus each answer token's final hidden state. ``classify`` scores only its
  label words' rows, which is negligible.
* **Overhead**: the process and runtime (Python, torch, transformers; the CUDA context), calibrated per backend,
  plus what bitsandbytes adds on a 4/8-bit base (its kernels and dequantisation buffers; ~220 MiB on CPU).
  On unified memory (Jetson) the host process and the CUDA context share one pool, so both count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from fedge.profiles.calibration import Calibration
from fedge.profiles.architecture import ATTENTION_INPUT_ROLES, MLP_INPUT_ROLES
from fedge.profiles.model_shape import ModelShape

WEIGHT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0, "bf16": 2.0, "fp16": 2.0, "fp32": 4.0}
ACTIVATION_BYTES = {"nf4": 2, "int8": 2, "bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "sgd": 0, "galore": 0}  # GaLore's state is costed per matrix (galore_state_bytes)
LOSS_CHUNK_TOKENS = 256  # the trainer's chunk of answer positions (fedge.task.instruction)
LOGIT_BYTES = 14  # per live logit of a chunk: recomputed logits and their fp32 copy, softmax, gradient (4+4+4+2)
ADAPTER_BYTES = 4 + 4  # fp32 weight + fp32 gradient


@dataclass(frozen=True)
class TrainingSetup:
    """What a device trains: the inputs of the memory and time models, in the Assignment's own terms."""

    quantization: str
    layers: tuple[int, ...]
    ranks: tuple[int, ...]  # one per layer, parallel to ``layers``
    target_modules: tuple[str, ...]
    batch_size: int
    seq_len: int
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    cached_examples: int = 0  # examples whose frozen-prefix states the cache keeps
    examples: int = 0  # the device's local examples (more than ``cached_examples``: the rest are recomputed)
    answer_share: float = 0.0  # the share of tokens whose full-vocabulary loss is computed (instruct, multi-token labels)
    sequences_per_example: int = 1  # classify with labels of several tokens: one sequence per label

    @property
    def sequences(self) -> int:
        """Sequences a step runs: the batch's examples, each as many times as it has sequences."""
        return self.batch_size * self.sequences_per_example

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def uncached_fraction(self) -> float:
        """The share of examples the cache cannot keep, whose prefix is recomputed whenever a step trains on them."""
        return max(0.0, 1.0 - self.cached_examples / self.examples) if self.examples else 0.0


@dataclass(frozen=True)
class MemoryBreakdown:
    base_weights: int
    adapter_state: int
    activations: int
    cached_prefix: int
    overhead: int

    @property
    def total(self) -> int:
        return self.base_weights + self.adapter_state + self.activations + self.cached_prefix + self.overhead

    def to_dict(self) -> dict[str, int]:
        return asdict(self) | {"total": self.total}


@lru_cache(maxsize=256)
def base_weight_bytes(shape: ModelShape, quantization: str) -> int:
    linear = shape.num_layers * shape.linear_params_per_layer
    if quantization == "nf4":
        return int(linear * WEIGHT_BYTES["nf4"] + 4 * shape.other_params)
    if quantization == "int8":
        rows = shape.num_layers * sum(shape.module_dims(module)[0] for module in shape.linear_modules)
        return int(linear + 4 * rows + 4 * shape.other_params)
    return int(shape.total_params * WEIGHT_BYTES[quantization])


def galore_state_bytes(shape: ModelShape, setup: TrainingSetup, host_memory: bool = True) -> int:
    """Full-weight training with GaLore (strategy ``full``): every trained matrix's fp32 gradient (d·k), its
    projector (the shorter side × r) and Adam's two moments in the projected space (r × the longer side), fp32; with
    ``host_memory`` (a CPU, or a GPU sharing the host's memory) also the copy of the matrix the round began with,
    which the device keeps in host memory to take the round's change against. The weights themselves are in
    ``base_weights``."""
    total = 0
    for rank in setup.ranks:
        for module in setup.target_modules:
            rows, cols = shape.module_dims(module)
            total += 4 * (rows * cols + min(rows, cols) * rank + 2 * rank * max(rows, cols))
            total += int(WEIGHT_BYTES[setup.quantization] * rows * cols) if host_memory else 0
    return total


def lora_params(shape: ModelShape, setup: TrainingSetup) -> int:
    per_rank = sum(sum(shape.module_dims(module)) for module in setup.target_modules)
    return sum(setup.ranks) * per_rank


@lru_cache(maxsize=4096)
def saved_elements_per_token(shape: ModelShape, rank: int, target_modules: tuple[str, ...]) -> int:
    """Values autograd keeps per token for one trained decoder layer (LoRA on frozen linears, sdpa attention).

    A frozen linear keeps nothing (its input gradient needs only the weight); each norm keeps its input (2h);
    sdpa keeps q and k (after the rotary embedding where there is one), v and its output (2·q_dim + 2·kv_dim); a
    gated MLP keeps gate, act(gate) and up (3i), a plain one fc and act(fc) (2i). LoRA keeps each adapted module's
    input: the normalised hidden state once for the attention inputs (h) and once for the MLP inputs (h), the
    re-laid-out attention output for the output projection (q_dim), the MLP product for the down projection (i);
    plus every module's rank-r intermediate. Module roles come from ``fedge.profiles.architecture``.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    q_dim, kv_dim = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    roles = {shape.architecture.modules[module] for module in target_modules if module in shape.architecture.modules}
    lora_inputs = (
        h * bool(roles & ATTENTION_INPUT_ROLES)
        + h * bool(roles & MLP_INPUT_ROLES)
        + q_dim * ("o" in roles)
        + i * ("down" in roles)
    )
    mlp = (3 if shape.architecture.gated_mlp else 2) * i
    return 2 * h + 2 * q_dim + 2 * kv_dim + mlp + lora_inputs + rank * len(target_modules)


@lru_cache(maxsize=4096)
def wide_lora_elements_per_token(shape: ModelShape, rank: int, target_modules: tuple[str, ...]) -> int:
    """The part of ``saved_elements_per_token`` that LoRA on the attention output and the MLP projections adds (their
    inputs and rank-r intermediates). Training those costs more than these tensors — their backward passes allocate
    temporaries of the MLP's width, and on CPU the heap keeps the holes they leave — so calibration gives the part
    its own factor."""
    h, i = shape.hidden_size, shape.intermediate_size
    q_dim = shape.num_heads * shape.head_dim
    roles = [shape.architecture.modules[module] for module in target_modules if module in shape.architecture.modules]
    wide = [role for role in roles if role not in ATTENTION_INPUT_ROLES]
    return h * bool(set(wide) & MLP_INPUT_ROLES) + q_dim * ("o" in wide) + i * ("down" in wide) + rank * len(wide)


def activation_elements(shape: ModelShape, setup: TrainingSetup) -> int:
    """Counted activation values: every trained layer's saved tensors, or with checkpointing each layer's input
    plus one layer's saved tensors while it is recomputed."""
    tokens = setup.sequences * setup.seq_len
    total, largest = _saved_per_token(shape, setup.ranks, setup.target_modules)
    if setup.gradient_checkpointing:
        return tokens * (setup.depth * shape.hidden_size + largest)
    return tokens * total


@lru_cache(maxsize=65536)
def _saved_per_token(shape: ModelShape, ranks: tuple[int, ...], target_modules: tuple[str, ...]) -> tuple[int, int]:
    """(sum, largest) over the trained layers of the values each keeps per token."""
    per_layer = [saved_elements_per_token(shape, rank, target_modules) for rank in ranks]
    return sum(per_layer), max(per_layer)


def wide_lora_activation_elements(shape: ModelShape, setup: TrainingSetup) -> int:
    """The part of ``activation_elements`` from LoRA beyond the attention inputs (none with checkpointing, whose
    single recomputed layer is covered by its own factor)."""
    if setup.gradient_checkpointing:
        return 0
    return setup.sequences * setup.seq_len * _wide_per_token(shape, setup.ranks, setup.target_modules)


@lru_cache(maxsize=65536)
def _wide_per_token(shape: ModelShape, ranks: tuple[int, ...], target_modules: tuple[str, ...]) -> int:
    return sum(wide_lora_elements_per_token(shape, rank, target_modules) for rank in ranks)


def activation_bytes(shape: ModelShape, setup: TrainingSetup, calibration: Calibration) -> int:
    """The calibrated activation memory (the output layer's apart)."""
    element = ACTIVATION_BYTES[setup.quantization]
    wide = wide_lora_activation_elements(shape, setup)
    rest = activation_elements(shape, setup) - wide
    return int((calibration.activation_factor_for(setup.gradient_checkpointing) * rest + calibration.wide_lora_factor_or_default * wide) * element)


def output_layer_bytes(shape: ModelShape, setup: TrainingSetup) -> int:
    """The instruct loss's live memory: one chunk of vocabulary logits and the answer tokens' hidden states."""
    answers = int(setup.sequences * setup.seq_len * setup.answer_share)
    if not answers:
        return 0
    return min(answers, LOSS_CHUNK_TOKENS) * shape.vocab_size * LOGIT_BYTES + answers * shape.hidden_size * 4


def predict_memory(shape: ModelShape, setup: TrainingSetup, calibration: Calibration, unified_host: Calibration | None = None) -> MemoryBreakdown:
    """Peak memory of training ``setup`` on a backend described by ``calibration``; pass the CPU calibration as
    ``unified_host`` for a GPU that shares host memory, whose host process then counts too."""
    element = ACTIVATION_BYTES[setup.quantization]
    if setup.optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {setup.optimizer!r}; expected one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    overhead = calibration.overhead_bytes + (unified_host.overhead_bytes if unified_host is not None else 0)
    if setup.quantization in ("nf4", "int8"):
        overhead += calibration.bitsandbytes_overhead_bytes
    return MemoryBreakdown(
        base_weights=base_weight_bytes(shape, setup.quantization),
        adapter_state=galore_state_bytes(shape, setup, calibration.backend == "cpu" or unified_host is not None) if setup.optimizer == "galore" else lora_params(shape, setup) * (ADAPTER_BYTES + OPTIMIZER_STATE_BYTES[setup.optimizer]),
        activations=activation_bytes(shape, setup, calibration) + output_layer_bytes(shape, setup),
        cached_prefix=setup.cached_examples * setup.seq_len * shape.hidden_size * element,
        overhead=int(overhead),
    )
