"""Mistakes an operator makes on a first run fail at once with a clear message: before torch or transformers are
even imported (here they cannot be), so a wrong broker, login or run directory costs a fraction of a second."""

from __future__ import annotations

import json
import subprocess
import sys

from fedge.broker import EmbeddedBroker, free_port
from fedge.task.data import Example, write_jsonl
from fedge.trust.enrolment import device_credentials_path, enroll

WITHOUT_HEAVY_IMPORTS = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'peft', 'bitsandbytes', 'onnxruntime'): sys.modules[name] = None  # importing them fails\n"
    "from fedge.shell.cli import main\nsys.exit(main(sys.argv[1:]))\n"
)


def fedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_HEAVY_IMPORTS, *args], capture_output=True, text=True, timeout=120)


def test_an_agent_with_no_broker_or_a_wrong_login_fails_before_the_heavy_imports(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [Example("food of animal", 1)])
    port = free_port()
    done = fedge("agent", "--broker", f"mqtt://127.0.0.1:{port}", "--insecure", "--id", "a1", "--data", str(tmp_path / "data.jsonl"))
    assert done.returncode == 1 and f"nothing answers at 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    fleet = tmp_path / "fleet"
    enroll(fleet, ["a1"])
    credentials = json.loads(device_credentials_path(fleet, "a1").read_text())
    credentials["broker_password"] = "not-the-password"
    (tmp_path / "wrong.json").write_text(json.dumps(credentials))
    with EmbeddedBroker(fleet_dir=fleet) as broker:
        done = fedge("agent", "--broker", broker.url, "--credentials", str(tmp_path / "wrong.json"), "--data", str(tmp_path / "data.jsonl"))
    assert done.returncode == 1 and "refused the connection" in done.stderr, done.stderr[-2000:]


def test_a_coordinator_with_no_broker_fails_before_the_heavy_imports(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [Example("food of animal", 1)])
    port = free_port()
    (tmp_path / "c.yaml").write_text(f"broker: mqtt://127.0.0.1:{port}\ninsecure: true\neval_data: {tmp_path / 'test.jsonl'}\n")
    done = fedge("coordinator", "--config", str(tmp_path / "c.yaml"))
    assert done.returncode == 1 and f"nothing answers at 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]


def test_exporting_an_unfinished_run_fails_before_the_heavy_imports(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"strategy": "hetlora", "task": {"kind": "classify"}}))
    done = fedge("export", str(tmp_path / "run"), "--onnx", str(tmp_path / "out"))
    assert done.returncode == 1 and "the run has not finished" in done.stderr, done.stderr[-2000:]
    done = fedge("export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "out"))
    assert done.returncode == 1 and "not a coordinator's run directory" in done.stderr, done.stderr[-2000:]
