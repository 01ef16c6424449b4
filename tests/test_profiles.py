import time

import psutil

import pytest

from fedge.wire import DeviceProfile
from fedge.profiles import catalogue_names, load_catalogue_profile, probe
from fedge.profiles.probe import detect_jetson, matmul_gflops


def test_probe_measures_this_machine():
    profile = probe("here", benchmark_s=0.2)
    assert isinstance(profile, DeviceProfile) and profile.source == "probe"
    assert 0 < profile.ram_available_bytes <= profile.ram_total_bytes
    assert profile.cpu_cores >= 1 and profile.gflops > 0
    assert profile.device_class in ("cpu", "cuda", "jetson")


def test_micro_benchmark_is_bounded_to_two_seconds():
    started = time.perf_counter()
    matmul_gflops(budget_s=10.0, size=128)
    assert time.perf_counter() - started < 3.0


def test_jetson_detection_reads_the_device_tree(tmp_path):
    tree = tmp_path / "device-tree"
    tree.mkdir()
    assert detect_jetson(tmp_path / "none", tree) is None
    (tree / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    assert detect_jetson(tmp_path / "none", tree) == "NVIDIA Jetson Orin Nano Developer Kit"


def test_catalogue_entries_are_profiles():
    assert {"jetson-orin-nano-8gb", "laptop-rtx3060-6gb", "cpu-8gb"} <= set(catalogue_names())
    jetson = load_catalogue_profile("jetson-orin-nano-8gb")
    assert jetson.unified_memory and jetson.is_jetson and jetson.ram_total_bytes == 8 * 1024**3
    laptop = load_catalogue_profile("laptop-rtx3060-6gb")
    assert laptop.cuda_total_bytes == 6 * 1024**3 and not laptop.unified_memory
    with pytest.raises(KeyError, match="unknown device"):
        load_catalogue_profile("toaster")


ISSUE_3_DEVICES = {
    "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-32gb", "jetson-agx-orin-64gb", "jetson-xavier-nx-8gb",
    "jetson-nano-4gb", "laptop-rtx3050-4gb", "laptop-rtx3060-6gb", "laptop-rtx4060-8gb", "laptop-rtx4090-16gb",
    "cpu-8gb", "cpu-16gb", "raspberry-pi-5-8gb",
}


@pytest.mark.parametrize("name", sorted(ISSUE_3_DEVICES))
def test_every_catalogue_entry_is_complete_and_consistent(name):
    profile = load_catalogue_profile(name)
    assert profile.source_note and profile.gflops > 0 and profile.memory_bandwidth_gbs > 0
    assert 0.5 <= profile.usable_memory_fraction <= 1.0
    assert profile.uplink_mbps > 0 and profile.downlink_mbps > 0
    if profile.device_class == "jetson":
        assert profile.unified_memory and profile.jetson_model.startswith("NVIDIA Jetson") and profile.cuda_total_bytes is None
    elif profile.device_class == "cuda":
        assert not profile.unified_memory and 0 < profile.cuda_total_bytes < profile.ram_total_bytes
        assert profile.fp16_gflops > profile.gflops  # tensor cores
    else:
        assert profile.cuda_total_bytes is None and profile.bitsandbytes_usable  # bitsandbytes' CPU backend


def test_a_gpu_device_simulated_on_a_cpu_host_keeps_its_limits_and_takes_the_hosts_backend():
    from fedge.profiles import simulated_profile

    laptop = simulated_profile("laptop-rtx3060-6gb", host_has_cuda=False, host_bitsandbytes=True)
    assert laptop.source == "simulated" and laptop.cuda_device_name is None and laptop.bitsandbytes_usable
    assert laptop.ram_available_bytes == 6 * 2**30 and laptop.gflops == load_catalogue_profile("laptop-rtx3060-6gb").gflops
    jetson = simulated_profile("jetson-orin-nano-8gb", host_has_cuda=False, host_bitsandbytes=False)
    assert jetson.ram_available_bytes == 8 * 2**30 and not jetson.bitsandbytes_usable
    on_gpu = simulated_profile("jetson-orin-nano-8gb", host_has_cuda=True, host_bitsandbytes=True)
    assert on_gpu.cuda_device_name == load_catalogue_profile("jetson-orin-nano-8gb").cuda_device_name


def test_catalogue_figures_order_devices_sensibly():
    nano, agx = load_catalogue_profile("jetson-nano-4gb"), load_catalogue_profile("jetson-agx-orin-64gb")
    assert agx.gflops > 10 * nano.gflops and agx.memory_bandwidth_gbs > nano.memory_bandwidth_gbs
    assert set(catalogue_names()) >= ISSUE_3_DEVICES


def test_a_busy_machine_is_noticed_and_measured_again(monkeypatch, caplog):
    import importlib
    import subprocess
    import sys

    probing = importlib.import_module("fedge.profiles.probe")  # the module (fedge.profiles.probe is also its function's name)

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(psutil.cpu_count() or 1)]
    try:
        _, busy = probing.others_share(lambda: time.sleep(1.0))
    finally:
        for hog in hogs:
            hog.kill()
    assert busy > probing.BUSY_SHARE  # others held the CPU while this process slept
    _, own = probing.others_share(lambda: sum(range(3_000_000)))
    assert own < busy  # this process's own work is not counted against the machine
    shares = iter([(10.0, 0.9), (30.0, 0.6), (20.0, 0.1)])
    monkeypatch.setattr(probing, "others_share", lambda measure: next(shares))
    monkeypatch.setattr(probing, "BUSY_PAUSE_S", 0.0)
    assert probing.measured_when_quiet("matmul throughput", None) == (30.0, None)  # the best, once a run was quiet
    assert caplog.text.count("the machine is busy") == 2
    shares = iter([(10.0, 0.9), (12.0, 0.8), (11.0, 0.7)])
    best, note = probing.measured_when_quiet("memory bandwidth", None)
    assert best == 12.0 and note == "memory bandwidth measured while other work held 70% of the CPU: it may be low"


def test_the_probe_measures_memory_bandwidth_and_leaves_links_unknown():
    profile = probe("here", benchmark_s=0.2)
    assert profile.memory_bandwidth_gbs > 0 and profile.gflops > 0
    assert profile.uplink_mbps is None and profile.downlink_mbps is None
