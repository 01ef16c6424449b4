"""The planner's constraints: never over memory, stragglers bounded, infeasible devices refused with a reason."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.coordinator.plans import FleetMember, Pin, PlannerOptions

from fedge.coordinator.costing import quantization_choices, rank_profile, usable_memory_bytes

from fedge.coordinator.planner import plan_fleet
from fedge.profiles import catalogue_names, load_catalogue_profile
from fedge.profiles.memory import base_weight_bytes
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.timing import transfer_seconds

MODELS = ("smollm2-135m-instruct", "qwen2.5-0.5b", "llama-3.2-1b", "llama-2-7b")


def _fleet(*names: str, examples: int = 400) -> list[FleetMember]:
    return [FleetMember(f"{name}-{index}", load_catalogue_profile(name), examples) for index, name in enumerate(names)]


def _check_constraints(plan, options):
    feasible = plan.feasible()
    for device in feasible:
        assert device.memory.total <= device.budget_bytes <= options.safety_margin * device.available_bytes + 1
        assert device.depth >= 1 and device.local_steps >= 1 and device.batch_size >= 1
        assert list(device.ranks) == sorted(device.ranks)  # ranks never fall toward the output
    if len(feasible) >= 2:
        assert max(d.round_seconds for d in feasible) <= options.straggler_bound * plan.median_round_seconds + 1e-9
    for device in plan.devices:
        assert device.feasible or device.reason


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(st.sampled_from(catalogue_names()), min_size=1, max_size=8),
    model=st.sampled_from(MODELS),
    batch=st.sampled_from([1, 4, 16, 64]),
    seq=st.sampled_from([32, 128, 512]),
    margin=st.floats(0.5, 1.0),
    bound=st.floats(1.0, 2.0),
)
def test_any_fleet_is_planned_within_memory_and_the_straggler_bound(names, model, batch, seq, margin, bound):
    options = PlannerOptions(batch_size=batch, seq_len=seq, safety_margin=margin, straggler_bound=bound, max_depth=12)
    plan = plan_fleet(_fleet(*names), load_model_shape(model), options)
    assert len(plan.devices) == len(names)
    _check_constraints(plan, options)


def test_rank_profiles_rise_toward_the_output():
    assert rank_profile(6, 16, 4) == (4, 4, 8, 8, 16, 16)
    assert rank_profile(1, 8, 4) == (8,)
    assert rank_profile(9, 32, 4) == (8, 8, 8, 16, 16, 16, 32, 32, 32)
    assert rank_profile(3, 4, 4) == (4, 4, 4)  # never below the smallest allowed rank


def test_quantization_follows_the_hardware():
    assert quantization_choices(load_catalogue_profile("cpu-16gb")) == ["fp32", "nf4"]  # bitsandbytes' CPU backend
    assert quantization_choices(replace(load_catalogue_profile("cpu-16gb"), bitsandbytes_usable=False)) == ["fp32"]
    assert quantization_choices(load_catalogue_profile("jetson-orin-nano-8gb")) == ["bf16", "nf4"]
    assert quantization_choices(load_catalogue_profile("jetson-nano-4gb")) == ["fp16"]  # Maxwell: no bf16, no bitsandbytes
    turing = replace(load_catalogue_profile("laptop-rtx3050-4gb"), cuda_capability="7.5")
    assert quantization_choices(turing) == ["fp16", "nf4"]


def test_full_weight_training_keeps_a_base_it_can_train_in_full():
    assert quantization_choices(load_catalogue_profile("cpu-16gb"), "full") == ["fp32"]
    assert quantization_choices(load_catalogue_profile("jetson-orin-nano-8gb"), "full") == ["bf16"]
    assert quantization_choices(load_catalogue_profile("jetson-nano-4gb"), "full") == ["fp32"]  # no fp16 master weights


def test_a_pinned_base_the_device_cannot_run_is_refused_at_plan_time():
    pins = {
        "cpu-8gb": (Pin(rank=4, depth=1, quantization="fp16"), "needs a CUDA GPU"),
        "jetson-nano-4gb": (Pin(rank=4, depth=1, quantization="bf16"), "Ampere"),
        "jetson-xavier-nx-8gb": (Pin(rank=4, depth=1, quantization="nf4"), "bitsandbytes"),
    }
    members = [FleetMember(name, load_catalogue_profile(name), 300, pin=pin) for name, (pin, _) in pins.items()]
    plan = plan_fleet(members, load_model_shape("smollm2-135m-instruct"), PlannerOptions(max_depth=4))
    for device in plan.devices:
        assert not device.feasible and "the pinned base cannot run here" in device.reason
        assert pins[device.device_id][1] in device.reason


def test_unified_memory_is_budgeted_from_host_memory_and_discrete_gpus_from_their_own():
    jetson, laptop = load_catalogue_profile("jetson-orin-nano-8gb"), load_catalogue_profile("laptop-rtx3050-4gb")
    assert usable_memory_bytes(jetson) == int(8 * 2**30 * 0.75)
    assert usable_memory_bytes(laptop) == int(4 * 2**30 * 0.9)


def test_a_7b_model_goes_4_bit_where_it_must_and_is_refused_where_it_cannot_fit():
    plan = plan_fleet(_fleet("jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "jetson-nano-4gb", "cpu-8gb"), load_model_shape("llama-2-7b"), PlannerOptions(max_depth=8))
    by_profile = {device.profile_name: device for device in plan.devices}
    assert by_profile["jetson-orin-nx-16gb"].quantization == "nf4"
    assert by_profile["jetson-agx-orin-64gb"].quantization == "bf16"  # room for the precise base
    for name in ("jetson-nano-4gb", "cpu-8gb"):
        assert not by_profile[name].feasible and "out of memory" in by_profile[name].reason


def test_a_hopelessly_slow_device_is_refused_as_too_slow():
    fleet = _fleet("laptop-rtx4090-16gb", "laptop-rtx4090-16gb", "cpu-16gb")
    options = PlannerOptions(seq_len=512, max_depth=12)
    plan = plan_fleet(fleet, load_model_shape("llama-3.2-1b"), options)
    cpu = plan.devices[-1]
    assert not cpu.feasible and cpu.reason.startswith("too slow") and "depth 1 and 1 local step" in cpu.reason
    assert [d.feasible for d in plan.devices[:2]] == [True, True]
    _check_constraints(plan, options)


def test_the_straggler_rule_never_leaves_the_run_below_its_minimum():
    """A GPU laptop and a CPU: refusing the CPU as a straggler would leave one device for a run that needs two, so
    it trains at its lightest workload instead; with a minimum of one it is refused as before."""
    fleet = _fleet("laptop-rtx4090-16gb", "cpu-16gb")
    options = PlannerOptions(seq_len=512, max_depth=12)
    alone = plan_fleet(fleet, load_model_shape("llama-3.2-1b"), options)
    assert not alone.devices[1].feasible and alone.devices[1].reason.startswith("too slow")
    together = plan_fleet(fleet, load_model_shape("llama-3.2-1b"), replace(options, min_devices=2))
    laptop, cpu = together.devices
    assert laptop.feasible and cpu.feasible
    assert (cpu.depth, cpu.local_steps) == (1, 1) and laptop.depth > 1


def test_stragglers_get_less_work_rather_than_holding_the_round():
    fleet = _fleet("laptop-rtx4060-8gb", "jetson-orin-nano-8gb", "cpu-16gb")
    options = PlannerOptions(max_depth=12, straggler_bound=1.25)
    plan = plan_fleet(fleet, load_model_shape("smollm2-135m-instruct"), options)
    laptop, _, cpu = plan.devices
    assert cpu.feasible and cpu.depth < laptop.depth
    _check_constraints(plan, options)
    unbounded = plan_fleet(fleet, load_model_shape("smollm2-135m-instruct"), replace(options, straggler_bound=1000.0))
    assert unbounded.devices[2].depth == 12  # with no bound the CPU keeps the full depth


def test_pins_are_costed_kept_and_refused_when_they_cannot_fit():
    members = [
        FleetMember("pinned", load_catalogue_profile("cpu-8gb"), 300, pin=Pin(rank=8, depth=2)),
        FleetMember("too-big", load_catalogue_profile("jetson-nano-4gb"), 300, pin=Pin(rank=8, depth=2, quantization="fp32")),
    ]
    plan = plan_fleet(members, load_model_shape("qwen2.5-0.5b"), PlannerOptions(batch_size=8, seq_len=128))
    assert plan.devices[0].feasible and plan.devices[0].ranks == (8, 8) and plan.devices[0].memory.total <= plan.devices[0].budget_bytes
    assert not plan.devices[1].feasible and "pinned" in plan.devices[1].reason


def test_invalid_options_are_reported_together():
    with pytest.raises(ValueError) as caught:
        plan_fleet(_fleet("cpu-8gb"), load_model_shape("smollm2-135m-instruct"), PlannerOptions(strategy="magic", safety_margin=1.5, ranks=()))
    assert all(key in str(caught.value) for key in ("strategy", "safety_margin", "ranks"))


def test_a_cpu_whose_memory_needs_it_gets_a_4_bit_base_costed_with_the_bitsandbytes_overhead():
    shape = load_model_shape("llama-3.2-1b")
    plan = plan_fleet(_fleet("raspberry-pi-5-8gb", "cpu-16gb"), shape, PlannerOptions(max_depth=4))
    pi, desktop = plan.devices
    assert pi.feasible and pi.quantization == "nf4"  # 5 GB of fp32 weights would leave no room to train
    assert desktop.feasible and desktop.quantization == "fp32"
    from fedge.profiles.calibration import load_calibration

    assert pi.memory.overhead == load_calibration("cpu").overhead_bytes + load_calibration("cpu").bitsandbytes_overhead_bytes > 0


def test_preparing_for_the_first_round_costs_the_download_and_caching_the_rows_it_trains_on_and_the_cache_is_bounded():
    shape = load_model_shape("smollm2-135m-instruct")
    options = PlannerOptions(max_depth=4, local_steps=10, batch_size=16)
    small, large = (plan_fleet(_fleet("cpu-16gb", examples=n), shape, options).feasible()[0] for n in (400, 40_000))
    # preparing caches the rows the first two rounds train on (2 × 10 steps × 16), whatever the dataset's size
    assert small.setup_seconds == pytest.approx(large.setup_seconds)
    download = transfer_seconds(0, base_weight_bytes(shape, small.quantization), load_catalogue_profile("cpu-16gb"))
    assert small.setup_seconds > download > 0
    assert small.memory.cached_prefix == 400 * 48 * shape.hidden_size * 4
    bounded = plan_fleet(_fleet("cpu-16gb", examples=40_000), shape, replace(options, prefix_cache_mib=64)).feasible()[0]
    assert bounded.memory.cached_prefix <= 64 * 2**20
    assert bounded.step_seconds > small.step_seconds  # rows the cache cannot keep are recomputed in the step
    assert PlannerOptions(prefix_cache_mib=0).problems() == ["prefix_cache_mib: must be >= 1"]
