"""One schema per file: typed, ranged, every error with its key path at once, "did you mean", no traceback, before
the heavy imports; the JSON Schemas and the reference are generated from it and current."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from fedge.config_schema import ConfigError
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.fleet import load_fleet
from fedge.shell.cli import build_parser
from fedge.shell.cli_reference import CLI_REFERENCE, cli_reference
from fedge.shell.schemas import REFERENCE, SCHEMA_DIR, SCHEMAS, json_schema, reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BAD_COORDINATOR = """\
eval_data: test.jsonl
insecure: true
learning_rate: "fast"
round_deadline_s: -3
seed: "zero"
registration_timeout_s: "5 min"
target_modules: q_proj
max_message_mb: "64"
planner: {max_depth: six}
roundz: 3
"""
HEAVY = ("torch", "transformers", "peft")


def _run_cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``fedge ARGV`` in a fresh interpreter, which then says whether any heavy library was imported."""
    script = ("import sys; from fedge.shell.cli import main; code = main(sys.argv[1:]); "
              f"print('HEAVY', sorted(name for name in {HEAVY!r} if name in sys.modules)); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_the_issues_coordinator_config_gets_every_error_at_once_before_the_heavy_imports(tmp_path):
    (tmp_path / "coordinator.yaml").write_text(BAD_COORDINATOR)
    done = _run_cli(tmp_path, "coordinator", "--config", "coordinator.yaml")
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output
    for line in ("learning_rate: expected a number (got 'fast')", "round_deadline_s: must be > 0 (got -3)", "seed: expected an integer (got 'zero')",
                 "registration_timeout_s: expected a number (got '5 min')", "target_modules: expected a list (got 'q_proj')",
                 "max_message_mb: expected a number (got '64')", "planner.max_depth: expected an integer (got 'six')", "roundz: unknown key; did you mean rounds?"):
        assert line in output, line
    assert "HEAVY []" in done.stdout


def test_trial_fleet_and_agent_errors_name_their_keys_without_heavy_imports(tmp_path):
    (tmp_path / "trial.yaml").write_text("strategies: [hetlora, {name: flexlora, proximal_mu: big}]\nfleet: [cpu-8gb, cpu-16gb]\nseeds: [0, -1]\ndata: {alpah: 0.3}\n")
    trial = _run_cli(tmp_path, "trial", "trial.yaml")
    for line in ("strategies[1].proximal_mu: expected a number (got 'big')", "seeds[1]: must be >= 0 (got -1)", "data.alpah: unknown key; did you mean alpha?"):
        assert line in trial.stdout + trial.stderr, line
    assert trial.returncode == 2 and "HEAVY []" in trial.stdout
    (tmp_path / "fleet.yaml").write_text("planner: {max_dept: 4}\ndevices: [{device: cpu-8gb, count: 0}]\n")
    fleet = _run_cli(tmp_path, "plan", "fleet.yaml")
    for line in ("planner.max_dept: unknown key; did you mean max_depth?", "devices[0].count: must be >= 1 (got 0)"):
        assert line in fleet.stdout + fleet.stderr, line
    agent = _run_cli(tmp_path, "agent", "--broker", "mqtt://127.0.0.1:1", "--heartbeat", "-1", "--threads", "two")
    for line in ("--data: required", "--heartbeat: must be > 0 (got '-1')", "--threads: expected an integer (got 'two')"):
        assert line in agent.stdout + agent.stderr, line
    assert agent.returncode == 1 and "HEAVY []" in agent.stdout and "Traceback" not in agent.stderr


def test_strings_never_become_sequences_or_numbers():
    base = {"eval_data": "t.jsonl", "insecure": True}
    for key, value in (("target_modules", "q_proj"), ("sites", "site-a"), ("max_message_mb", "64"), ("rounds", True), ("learning_rate", None)):
        with pytest.raises(ConfigError, match=f"\n  {key}: expected"):
            CoordinatorConfig.from_dict({**base, key: value})
    assert CoordinatorConfig.from_dict({**base, "target_modules": ["q_proj"], "max_message_mb": 64}).target_modules == ("q_proj",)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the coordinator config"):
        CoordinatorConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        CoordinatorConfig.from_yaml(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- devices\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_fleet(tmp_path / "list.yaml")


def test_the_committed_schemas_and_reference_are_what_the_models_generate():
    for kind in SCHEMAS:
        assert json.loads((ROOT / SCHEMA_DIR / f"{kind}.schema.json").read_text()) == json_schema(kind), f"run `fedge schema --write .` ({kind})"
    assert (ROOT / REFERENCE).read_text() == reference(), "run `fedge schema --write .`"
    assert (ROOT / CLI_REFERENCE).read_text() == cli_reference(build_parser()), "run `fedge schema --write .`"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_names_its_schema_and_passes_it(example):
    first = example.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=../schemas/")
    schema = json.loads((example.parent / first.split("=", 1)[1]).read_text())
    jsonschema.validate(yaml.safe_load(example.read_text()), schema)


def test_the_json_schema_refuses_what_the_models_refuse():
    schema = json_schema("coordinator")
    for bad in ({"eval_data": "t", "rounds": "5"}, {"eval_data": "t", "round_deadline_s": -3}, {"eval_data": "t", "roundz": 3}, {"rounds": 3}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    jsonschema.validate({"eval_data": "t", "planner": {"ranks": [4, 8]}, "devices": {"cpu": {"rank": 4, "depth": 2}}}, schema)
