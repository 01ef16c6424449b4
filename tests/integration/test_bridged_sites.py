"""Sites on their own Mosquitto, bridged to a central one: two site aggregators (``--role site``) each run their
devices' rounds and forward one update per round; only the sites' own topics cross the bridges."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.site import SiteAggregator
from fedge.coordinator.validation import SITE_CLASS
from fedge.broker import free_port
from fedge.task.data import write_jsonl
from fedge.task.wordnet import Example
from fedge.trust.broker_files import Bridge, write_mosquitto_files
from fedge.trust.enrolment import Credentials, Enrolment, coordinator_credentials, device_credentials_path, enroll
from fedge.wire import GlobalState, Hello
from fedge.profiles import load_catalogue_profile
from tests.conftest import MOSQUITTO, _wait_for_port
from tests.integration.helpers import await_connected
from tests.integration.scripted import ScriptedAgent

pytestmark = [pytest.mark.broker, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]

SITES = {"site-a": ("a0", "a1"), "site-b": ("b0",)}
ROUNDS = 3


def _broker(fleet, directory, bridge: Bridge | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = write_mosquitto_files(Enrolment.load(fleet), directory, port=port, bridge=bridge)[-1]
    if os.geteuid() == 0:  # Mosquitto started as root drops to user "mosquitto", which cannot read our 0600 files
        conf.write_text(conf.read_text() + "user root\n")
    return _start(conf, port), port


def _start(conf, port: int) -> subprocess.Popen:
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port)
    return process


def _settings(tmp_path, backbone, fleet, port, name, **extra) -> CoordinatorConfig:
    return CoordinatorConfig.from_dict({
        "run_id": "sites", "run_dir": str(tmp_path / name / "run"), "broker": f"mqtt://127.0.0.1:{port}", "backbone": str(backbone),
        "enrolment": str(fleet), "eval_data": str(tmp_path / "test.jsonl"), "rounds": ROUNDS, "min_clients": 1,
        "registration_timeout_s": 60, "round_deadline_s": 120, "max_weight_share": 1.0,
        "planner": {"max_depth": 1, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 1}}, **extra,
    })


def _await(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.05)


def _device(url: str, credentials: Credentials) -> None:
    agent = ScriptedAgent(url, credentials, heartbeat_s=1)
    agent.hello()
    for round_number in range(1, ROUNDS + 1):
        if round_number not in agent.states:  # the first state waits for both sites to register upstream: allow for it
            agent._next(lambda message: isinstance(message, GlobalState) and message.round == round_number, 120)
        agent.send(agent.update(round_number))
    agent._next(lambda message: isinstance(message, GlobalState) and message.final, 60)
    agent.close()


def test_two_bridged_sites_each_forward_one_update_per_round_and_their_devices_stay_local(tiny_backbone, tmp_path):
    """Also through a restart of the central broker after round 1 (its sessions lost: persistence is off)."""
    write_jsonl(tmp_path / "test.jsonl", [Example("food of time", i % 8) for i in range(8)])
    central_fleet = tmp_path / "central-fleet"
    enroll(central_fleet, [*SITES, "pretender"])
    central, central_port = _broker(central_fleet, tmp_path / "central-broker")
    processes, threads, finished = [central], [], []
    seen: set[str] = set()
    monitor = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="monitor")  # the central coordinator's login sees every uplink
    login = coordinator_credentials(central_fleet)
    monitor.username_pw_set(login.broker_username, login.broker_password)
    monitor.on_message = lambda client, userdata, message: seen.add(message.topic)
    monitor.on_connect = lambda client, userdata, flags, reason, properties: client.subscribe([("fedge/v1/agents/+/up", 1), ("fedge/v1/agents/+/beat", 0)])
    monitor.connect("127.0.0.1", central_port)
    monitor.loop_start()
    try:
        root = Coordinator(_settings(tmp_path, tiny_backbone, central_fleet, central_port, "central", sites=list(SITES), expected_clients=2, min_clients=2))
        threads.append(threading.Thread(target=lambda: finished.append(root.run()), daemon=True))
        sites, devices_of = {}, {}
        for site, devices in SITES.items():
            fleet = tmp_path / f"{site}-fleet"
            enroll(fleet, list(devices))
            upstream = device_credentials_path(central_fleet, site)
            identity = Credentials.load(upstream)
            process, port = _broker(fleet, tmp_path / f"{site}-broker", Bridge(site, "127.0.0.1", central_port, identity.broker_username, identity.broker_password))
            processes.append(process)
            sites[site] = SiteAggregator(_settings(tmp_path, tiny_backbone, fleet, port, site, upstream=str(upstream), expected_clients=len(devices)))
            threads.append(threading.Thread(target=sites[site].run, daemon=True))
            devices_of[site] = [threading.Thread(target=_device, args=(f"mqtt://127.0.0.1:{port}", Credentials.load(device_credentials_path(fleet, device))), daemon=True) for device in devices]
        for thread in threads:
            thread.start()
        for coordinator in (root, *(site.local for site in sites.values())):
            await_connected(coordinator)
        for site_devices in devices_of.values():
            threads += site_devices
            for thread in site_devices:
                thread.start()
        pretender = ScriptedAgent(f"mqtt://127.0.0.1:{central_port}", Credentials.load(device_credentials_path(central_fleet, "pretender")))
        pretender.send(Hello("pretender", replace(load_catalogue_profile("cpu-16gb"), device_class=SITE_CLASS), 10**6))
        assert "sites:" in pretender.expect_reject("bad_profile").detail  # only the sites the centre lists may act as one
        pretender.close()
        _await(lambda: (root.run_dir.path / "globals" / "round_001.safetensors").exists(), 120)
        processes[0].terminate()
        processes[0].wait(timeout=10)
        processes[0] = _start(tmp_path / "central-broker" / "mosquitto.conf", central_port)  # bridges and the centre reconnect
        for thread in threads:
            thread.join(timeout=180)
        assert finished, "the central run must complete"
        rounds = root.run_dir.rounds()[1:]
        assert [r["contributors"] for r in rounds] == [["site-a", "site-b"]] * ROUNDS
        assert all(set(r["bytes_up"]) == {"site-a", "site-b"} for r in rounds)  # one update per site per round
        for site, devices in SITES.items():
            local = sites[site].local.run_dir.rounds()  # no round 0: a site starts from the centre's state
            assert [r["contributors"] for r in local] == [sorted(devices)] * ROUNDS
        up = {topic.split("/")[3] for topic in seen}
        assert up == {*SITES, "pretender"}, f"only the sites' own topics cross the bridges, saw {sorted(up)}"
    finally:
        monitor.loop_stop()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
