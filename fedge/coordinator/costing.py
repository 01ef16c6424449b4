"""The cost model of one kind of device (``DeviceCosting``): which bases it runs, how much memory it has, and what
each training setup costs it in memory, time and bytes; each distinct setup is costed once."""

from __future__ import annotations

from functools import lru_cache

from fedge.coordinator.plans import DevicePlan, Pin, PlannerOptions
from fedge.profiles.calibration import Calibration, load_calibration
from fedge.profiles.memory import ACTIVATION_BYTES, MemoryBreakdown, TrainingSetup, base_weight_bytes, predict_memory
from fedge.profiles.model_shape import ModelShape
from fedge.profiles.timing import device_gflops, predict_prefix_seconds, predict_round_bytes, predict_step_seconds, transfer_seconds
from fedge.wire import PREPARED_ROUNDS, DeviceProfile


@lru_cache(maxsize=4096)
def rank_profile(depth: int, top_rank: int, floor: int) -> tuple[int, ...]:
    """Per-layer ranks from the lowest adapted layer up: thirds at r/4, r/2, r nearest the output."""
    from_top = [max(floor, top_rank >> (3 * distance // depth)) for distance in range(depth)]
    return tuple(reversed(from_top))


def _ampere(profile: DeviceProfile) -> bool:
    return profile.cuda_capability is not None and float(profile.cuda_capability) >= 8.0


def quantization_problem(profile: DeviceProfile, quantization: str, strategy: str) -> str | None:
    """Why this device cannot train on a ``quantization`` base under ``strategy``, or None when it can."""
    cuda = bool(profile.cuda_device_name)
    if quantization in ("nf4", "int8"):
        if strategy == "full":
            return f"full-weight training needs a 16/32-bit base, not {quantization}"
        if not profile.bitsandbytes_usable:
            return f"{quantization} needs bitsandbytes, which does not load on this device"
    if quantization == "bf16" and cuda and not _ampere(profile):
        return f"bf16 needs an Ampere or newer GPU (compute capability {profile.cuda_capability}); use fp16"
    if quantization == "fp16" and not cuda:
        return "fp16 training needs a CUDA GPU; CPUs train fp32, bf16 or nf4"
    if quantization == "fp16" and strategy == "full":
        return "full-weight training cannot loss-scale fp16 weights (no fp32 master copy); use fp32"
    return None


def quantization_choices(profile: DeviceProfile, strategy: str = "fedit") -> list[str]:
    """Bases this device can train on under ``strategy``, most precise first: the backend's natural precision
    (CPU fp32; CUDA bf16, or fp16 before Ampere), then NF4 (bitsandbytes runs it on CPUs as well as on CUDA).
    Full-weight training keeps a 16/32-bit base: fp32 where the GPU has no bf16."""
    if not profile.cuda_device_name:
        preferred = ["fp32", "nf4"]
    elif _ampere(profile):
        preferred = ["bf16", "nf4"]
    else:
        preferred = ["fp32"] if strategy == "full" else ["fp16", "nf4"]
    return [q for q in preferred if quantization_problem(profile, q, strategy) is None]


def usable_memory_bytes(profile: DeviceProfile) -> int:
    """Memory training may occupy: GPU memory on a discrete GPU, host memory otherwise, after the usable share."""
    if profile.cuda_device_name and not profile.unified_memory:
        free = profile.cuda_free_bytes if profile.cuda_free_bytes is not None else profile.cuda_total_bytes or 0
    else:
        free = profile.ram_available_bytes
    return int(free * profile.usable_memory_fraction)


class DeviceCosting:
    """The cost model of one kind of device: a profile with a dataset size and a pin. Fleet members that share all
    three share one, so each distinct setup is costed once however many devices run it."""

    def __init__(self, profile: DeviceProfile, num_examples: int, pin: Pin | None, shape: ModelShape, options: PlannerOptions, calibrations: dict[str, Calibration]):
        self.profile = profile
        self.num_examples = num_examples
        self.pin = pin
        self.shape = shape
        self.options = options
        self.backend = "cuda" if profile.cuda_device_name else "cpu"
        self.calibration = calibrations[self.backend]
        self.host = calibrations["cpu"] if self.backend == "cuda" and profile.unified_memory else None
        self.available = usable_memory_bytes(profile)
        self.budget = int(self.available * options.safety_margin)
        self._memory: dict[TrainingSetup, MemoryBreakdown] = {}
        self._step: dict[TrainingSetup, float] = {}
        self._plans: dict[tuple[TrainingSetup, int, int], DevicePlan] = {}
        self._largest: dict[int, TrainingSetup | str] = {}

    def setup(self, quantization: str, depth: int, top_rank: int, batch: int, checkpointing: bool, uniform: bool = False) -> TrainingSetup:
        layers = tuple(range(self.shape.num_layers - depth, self.shape.num_layers))
        uniform = uniform or self.options.rank_profile == "uniform"
        ranks = (top_rank,) * depth if uniform else rank_profile(depth, top_rank, min(self.options.ranks))
        cached = self.cached_rows(quantization, batch)
        optimizer = "galore" if self.options.strategy == "full" else self.options.optimizer  # full-weight training runs GaLore (fedge.strategies.full)
        return TrainingSetup(quantization, layers, ranks, self.options.target_modules, batch, self.options.seq_len, optimizer, checkpointing, cached, self.num_examples, self.options.answer_share, self.options.sequences_per_example)

    def cached_rows(self, quantization: str, batch: int) -> int:
        """The examples whose frozen-prefix states fit the cache's bound (at least a batch)."""
        row_bytes = self.options.sequences_per_example * self.options.seq_len * self.shape.hidden_size * ACTIVATION_BYTES[quantization]
        return min(self.num_examples, max(batch, self.options.prefix_cache_mib * 2**20 // row_bytes))

    def memory(self, setup: TrainingSetup) -> MemoryBreakdown:
        found = self._memory.get(setup)
        if found is None:
            found = self._memory[setup] = predict_memory(self.shape, setup, self.calibration, self.host)
        return found

    def fits(self, setup: TrainingSetup) -> bool:
        return self.memory(setup).total <= self.budget

    def step_seconds(self, setup: TrainingSetup) -> float:
        found = self._step.get(setup)
        if found is None:
            found = self._step[setup] = predict_step_seconds(self.shape, setup, device_gflops(self.profile, setup.quantization), self.calibration)
        return found

    def plan(self, setup: TrainingSetup, local_steps: int, fleet_rank_sum: int) -> DevicePlan:
        """This kind's plan for ``setup`` (``device_id`` left empty for the caller to fill in)."""
        key = (setup, local_steps, fleet_rank_sum)
        found = self._plans.get(key)
        if found is None:
            found = self._plans[key] = self._cost(setup, local_steps, fleet_rank_sum)
        return found

    def _cost(self, setup: TrainingSetup, local_steps: int, fleet_rank_sum: int) -> DevicePlan:
        profile = self.profile
        step = self.step_seconds(setup)
        up, down = predict_round_bytes(self.options.strategy, self.shape, setup, fleet_rank_sum)
        return DevicePlan(
            device_id="",
            profile_name=profile.name,
            feasible=True,
            quantization=setup.quantization,
            layers=setup.layers,
            ranks=setup.ranks,
            batch_size=setup.batch_size,
            local_steps=local_steps,
            gradient_checkpointing=setup.gradient_checkpointing,
            memory=self.memory(setup),
            budget_bytes=self.budget,
            available_bytes=self.available,
            step_seconds=step,
            setup_seconds=predict_prefix_seconds(self.shape, setup, min(setup.examples, PREPARED_ROUNDS * local_steps * setup.batch_size), device_gflops(profile, setup.quantization), self.calibration)
            + transfer_seconds(0, int(base_weight_bytes(self.shape, setup.quantization)), profile),
            round_seconds=local_steps * step + transfer_seconds(up, down, profile),
            bytes_up=up,
            bytes_down=down,
            calibrated=self.calibration.measured,
            simulated=profile.source == "simulated",
        )

    def refuse(self, reason: str, device_id: str = "") -> DevicePlan:
        return DevicePlan(device_id, self.profile.name, False, reason, budget_bytes=self.budget, available_bytes=self.available, calibrated=self.calibration.measured)

    def chosen_setup(self, max_depth: int) -> TrainingSetup | str:
        """The pinned setup if there is a pin, else the largest that fits; or why none does."""
        return self.pinned_setup(self.pin) if self.pin else self.largest_setup(max_depth)

    def pinned_setup(self, pin: Pin) -> TrainingSetup | str:
        """The operator's pin, with gradient checkpointing if that is what makes it fit, or why it cannot fit."""
        if pin.depth > self.shape.num_layers:
            return f"pinned depth {pin.depth} exceeds the model's {self.shape.num_layers} layers"
        problem = quantization_problem(self.profile, pin.quantization, self.options.strategy)
        if problem:
            return f"the pinned base cannot run here: {problem}"
        for checkpointing in (False, True):
            setup = self.setup(pin.quantization, pin.depth, pin.rank, self.options.batch_size, checkpointing, uniform=True)
            if self.fits(setup):
                return setup
        need = self.memory(setup).total
        return f"out of memory: the pinned {pin.quantization} rank {pin.rank} depth {pin.depth} needs {need / 2**30:.2f} GiB; the budget is {self.budget / 2**30:.2f} GiB"

    def largest_setup(self, max_depth: int) -> TrainingSetup | str:
        """The highest-capacity setup that fits the budget, or why none does: the deepest adapter (found by bisection,
        memory growing with depth), then at that depth the highest rank, without checkpointing if possible."""
        if max_depth not in self._largest:
            self._largest[max_depth] = self._search_largest(max_depth)
        return self._largest[max_depth]

    def _search_largest(self, max_depth: int) -> TrainingSetup | str:
        choices = quantization_choices(self.profile, self.options.strategy)
        roomy = [q for q in choices if base_weight_bytes(self.shape, q) + self.calibration.overhead_bytes <= self.budget / 2]
        variants = [(top_rank, checkpointing) for top_rank in sorted(self.options.ranks, reverse=True) for checkpointing in (False, True)]
        for quantization in dict.fromkeys(roomy[:1] + choices[-1:]):  # the most precise roomy base, else the smallest
            batch = self.options.batch_size
            while batch >= 1:

                def first_fit(depth: int) -> TrainingSetup | None:
                    setups = (self.setup(quantization, depth, top_rank, batch, checkpointing) for top_rank, checkpointing in variants)
                    return next((setup for setup in setups if self.fits(setup)), None)

                if first_fit(1) is not None:
                    shallow, deep = 1, max_depth  # first_fit(shallow) holds; find the deepest depth where it does
                    while shallow < deep:
                        middle = (shallow + deep + 1) // 2
                        shallow, deep = (middle, deep) if first_fit(middle) is not None else (shallow, middle - 1)
                    return first_fit(shallow)
                batch //= 2
        smallest = self.setup(choices[-1], 1, min(self.options.ranks), 1, True)
        need = self.memory(smallest).total
        return f"out of memory: even {choices[-1]}, depth 1, rank {min(self.options.ranks)}, batch 1 needs {need / 2**30:.2f} GiB; the budget is {self.budget / 2**30:.2f} GiB ({self.options.safety_margin:.0%} of {self.available / 2**30:.2f} GiB usable)"


def lighter(device: DeviceCosting, plan: DevicePlan) -> tuple[TrainingSetup, int] | None:
    """The next smaller workload for a straggler: one layer fewer, then fewer local steps; None at the floor."""
    if plan.depth > 1:
        return device.setup(plan.quantization, plan.depth - 1, max(plan.ranks), plan.batch_size, plan.gradient_checkpointing), plan.local_steps
    if plan.local_steps > 1:
        setup = device.setup(plan.quantization, 1, max(plan.ranks), plan.batch_size, plan.gradient_checkpointing)
        return setup, max(1, plan.local_steps * 3 // 4)
    return None


def default_calibrations() -> dict[str, Calibration]:
    """The bundled CPU and CUDA calibrations."""
    return {backend: load_calibration(backend) for backend in ("cpu", "cuda")}
