import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.shell.cli import main


def test_profile_json_is_machine_readable(capsys):
    assert main(["profile", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["source"] == "probe" and profile["ram_total_bytes"] > 0 and profile["gflops"] > 0


def test_profile_of_a_catalogue_device(capsys):
    assert main(["profile", "--json", "--device", "jetson-orin-nano-8gb"]) == 0
    assert json.loads(capsys.readouterr().out)["unified_memory"] is True


def test_bad_coordinator_config_exits_non_zero_naming_the_keys(tmp_path, caplog):
    config = tmp_path / "c.yaml"
    config.write_text("rounds: -1\n")
    assert main(["coordinator", "--config", str(config)]) == 1
    assert "eval_data: required" in caplog.text and "rounds: must be >= 1 (got -1)" in caplog.text


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit):
        main(["teleport"])


def test_plan_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "examples/fleet.yaml", "--model", "llama-2-7b", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Plan for llama-2-7b" in printed and "HierFedLoRA groups" in printed
    plan = json.loads(out.read_text())
    assert plan["model"] == "llama-2-7b" and len(plan["devices"]) == 9 and plan["groups"]
    assert {d["device_id"] for d in plan["devices"]} >= {"jetson-orin-nano-8gb-1", "jetson-orin-nano-8gb-2", "cpu-8gb"}
    feasible = [d for d in plan["devices"] if d["feasible"]]
    assert feasible and all(d["memory"]["total"] <= d["budget_bytes"] for d in feasible)
    assert all(d["reason"] for d in plan["devices"] if not d["feasible"])


def test_plan_summarises_a_large_fleet_by_kind_of_device(tmp_path, capsys):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("model: smollm2-135m-instruct\ndevices:\n  - {device: jetson-orin-nano-8gb, count: 3000, examples: 400}\n  - {device: cpu-16gb, count: 2000, examples: 400}\n")
    assert main(["plan", str(fleet)]) == 0
    summary = capsys.readouterr().out
    assert "5000 devices" in summary and "jetson-orin-nano-8gb ×3000" in summary and "cpu-16gb ×2000" in summary
    assert "jetson-orin-nano-8gb-17" not in summary
    assert main(["plan", str(fleet), "--devices"]) == 0
    assert "jetson-orin-nano-8gb-17" in capsys.readouterr().out


def test_plan_reports_every_fleet_file_error(tmp_path, caplog):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("planner: {ranks: [0], colour: red}\ndevices:\n  - {device: toaster-9000}\n  - {device: cpu-8gb, profile: x.json}\n  - {device: cpu-8gb, count: 0}\n")
    assert main(["plan", str(fleet), "--model", "smollm2-135m-instruct"]) == 1
    for problem in ("planner.colour: unknown key", "planner.ranks[0]: must be >= 1", "devices[0]: unknown device 'toaster-9000'", "devices[1]: give exactly one", "devices[2].count: must be >= 1 (got 0)"):
        assert problem in caplog.text


def test_plan_takes_a_live_profile_written_by_fedge_profile(tmp_path, capsys):
    assert main(["profile", "--json"]) == 0
    (tmp_path / "me.json").write_text(capsys.readouterr().out)
    (tmp_path / "fleet.yaml").write_text("devices:\n  - {profile: me.json, examples: 100, id: this-machine}\n")
    assert main(["plan", str(tmp_path / "fleet.yaml"), "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "p.json")]) == 0
    device = json.loads((tmp_path / "p.json").read_text())["devices"][0]
    assert device["device_id"] == "this-machine" and device["feasible"] and device["quantization"] == "fp32"


def test_plan_writes_json_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(Path(__file__).resolve().parent.parent / "examples" / "fleet.yaml")]) == 0
    assert list(tmp_path.iterdir()) == [] and "Plan for smollm2-135m-instruct" in capsys.readouterr().out


def test_version_and_help_on_every_option(capsys):
    from fedge.shell.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("fedge ")
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.choices and isinstance(action.choices, dict))
    for name, sub in [("fedge", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if action.dest not in ("help", "command") and action.option_strings + [action.dest]:
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_bad_files_are_reported_before_the_heavy_imports(tmp_path):
    """A wrong config or data file fails before peft/transformers load (seconds, not the 5+ s those take)."""
    (tmp_path / "bad.jsonl").write_text('{"text": "no label"}\n')
    (tmp_path / "c.yaml").write_text(f"eval_data: {tmp_path / 'bad.jsonl'}\ninsecure: true\n")
    probe = (
        "import sys\nfrom fedge.shell.cli import main\n"
        f"codes = [main(['agent', '--broker', 'mqtt://127.0.0.1:1', '--id', 'a', '--data', {str(tmp_path / 'bad.jsonl')!r}]),\n"
        f"         main(['coordinator', '--config', {str(tmp_path / 'c.yaml')!r}])]\n"
        "print(codes, sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[1, 1] []", result.stdout + result.stderr
    assert result.stderr.count("bad.jsonl:1:") == 2


def test_a_site_coordinator_without_its_upstream_credentials_says_so(tmp_path, caplog):
    (tmp_path / "test.jsonl").write_text('{"text": "food of time", "label": 2}\n')
    (tmp_path / "site.yaml").write_text(f"eval_data: {tmp_path / 'test.jsonl'}\ninsecure: true\n")
    assert main(["coordinator", "--config", str(tmp_path / "site.yaml"), "--role", "site"]) == 1
    assert "upstream" in caplog.text
    assert main(["coordinator", "--config", str(tmp_path / "site.yaml"), "--role", "site", "--resume"]) == 1
    assert "cannot --resume" in caplog.text
