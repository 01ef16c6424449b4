import time

import pytest

from fedge.wire import DeviceProfile
from profiles import catalogue_names, load_catalogue_profile, probe
from profiles.probe import detect_jetson, matmul_gflops


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
