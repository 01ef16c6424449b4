"""Shared pieces of the broker integration tests: a small labelled shard, a fedge command as a child process, an
enrolled fleet, and a small run of a coordinator with agents on one machine (signed end to end, as in production)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from fedge.task.data import Example, Row
from fedge.trust.enrolment import Credentials, device_credentials_path, enroll

FLEET_SIZE = 8  # devices a0 .. a7 are enrolled in every test fleet


def shard(seed: int, size: int = 24) -> list[Example]:
    """``size`` two-word examples over the eight labels, shifted by ``seed``."""
    words = ["animal", "food", "plant", "time", "place", "body", "person", "substance"]
    return [Example(f"{words[(i + seed) % 8]} of {words[(i * 3) % 8]}", (i + seed) % 8) for i in range(size)]


def cli(*args: str, log: Path) -> subprocess.Popen:
    """``python -m fedge.shell.cli --log-file LOG ARGS…`` with stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, "-m", "fedge.shell.cli", "--log-file", str(log), *args], stderr=subprocess.PIPE)


def finish(coordinator: subprocess.Popen, agents: list[subprocess.Popen], timeout_s: float = 240) -> None:
    """Wait for the coordinator to end the run and every agent to stop cleanly; kill whatever is left."""
    try:
        assert coordinator.wait(timeout=timeout_s) == 0, coordinator.stderr.read().decode()[-2000:]
        for agent in agents:
            code = agent.wait(timeout=60)
            assert code == 0, f"agent exit {code}: " + agent.stderr.read().decode()[-2000:]  # the final state ends each agent cleanly
    finally:
        for process in [coordinator, *agents]:
            process.kill()


def rows(examples: list[Example]) -> list[Row]:
    """Examples as an agent reads them from a file (labels as class indices)."""
    return [Row(example.text, example.label, line) for line, example in enumerate(examples, 1)]


def enrolled_fleet(tmp_path: Path, extra: tuple[str, ...] = ()) -> Path:
    """The enrolment directory under ``tmp_path`` of devices ``a0`` .. ``a7`` and ``extra`` (enrolled on first use)."""
    fleet = tmp_path / "fleet"
    wanted = [f"a{index}" for index in range(FLEET_SIZE)] + list(extra)
    missing = [identity for identity in wanted if not device_credentials_path(fleet, identity).exists()]
    if missing:
        enroll(fleet, missing)
    return fleet


def credentials_args(tmp_path: Path, agent_id: str) -> list[str]:
    """``fedge agent`` arguments that make ``agent_id`` take part with its enrolled credentials."""
    return ["--credentials", str(device_credentials_path(enrolled_fleet(tmp_path, (agent_id,)), agent_id))]


def credentials(tmp_path: Path, agent_id: str) -> Credentials:
    return Credentials.load(device_credentials_path(enrolled_fleet(tmp_path, (agent_id,)), agent_id))


def fleet_config(tmp_path: Path, broker_url: str, backbone: Path, **overrides) -> dict:
    """A short run's coordinator config for the enrolled fleet (run directory and held-out data ``test.jsonl``
    under ``tmp_path``)."""
    return {
        "run_id": "it", "run_dir": str(tmp_path / "run"), "broker": broker_url, "backbone": str(backbone), "enrolment": str(enrolled_fleet(tmp_path)),
        "eval_data": str(tmp_path / "test.jsonl"), "rounds": 1, "min_clients": 2, "expected_clients": 2,
        "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60, "round_deadline_s": 60, **overrides,
    }


def run_fleet(tmp_path: Path, config: dict, agents: int, profile: str = "cpu-8gb", extra_agent_args: list[str] = ()) -> list[dict]:
    """Run the coordinator and agents ``a0..`` (data ``a<i>.jsonl`` under ``tmp_path``, one shared backbone cache)
    to the end; returns the run's metrics records."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    coordinator = cli("coordinator", "--config", str(tmp_path / "c.yaml"), log=tmp_path / "coordinator.log")
    processes = [
        cli("agent", "--broker", config["broker"], "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", profile, "--cache", str(tmp_path / "cache"), *extra_agent_args, log=tmp_path / f"a{index}.log")
        for index in range(agents)
    ]
    finish(coordinator, processes)
    return [json.loads(line) for line in (Path(config["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def coordinator_in_thread(tmp_path: Path, broker_url: str, backbone: Path, settings: dict) -> tuple:
    """A coordinator for scripted agents (eight held-out rows, the enrolled fleet, rank 2 at depth 1) running in a
    thread: (coordinator, thread, finished), ``finished`` holding its summary once it returns. It returns once the
    coordinator is connected and subscribed: scripted agents say hello only once."""
    import threading

    from fedge.coordinator.config import CoordinatorConfig
    from fedge.coordinator.server import Coordinator
    from fedge.task.data import write_jsonl

    write_jsonl(tmp_path / "test.jsonl", [Example("food of time", i % 8) for i in range(8)])
    config = CoordinatorConfig.from_dict({
        "run_dir": str(tmp_path / "run"), "broker": broker_url, "backbone": str(backbone), "enrolment": str(enrolled_fleet(tmp_path)),
        "eval_data": str(tmp_path / "test.jsonl"), "expected_clients": 2, "registration_timeout_s": 30,
        "planner": {"max_depth": 1, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 1}}, **settings,
    })
    coordinator, finished = Coordinator(config), []
    thread = threading.Thread(target=lambda: finished.append(coordinator.run()), daemon=True)
    thread.start()
    await_connected(coordinator)
    return coordinator, thread, finished


def await_connected(coordinator, timeout_s: float = 30) -> None:
    """Until the coordinator (running in a thread) is connected and subscribed: a scripted agent's only hello must
    not reach the broker before it."""
    import time

    deadline = time.monotonic() + timeout_s
    while not coordinator.transport.connected and time.monotonic() < deadline:
        time.sleep(0.05)
