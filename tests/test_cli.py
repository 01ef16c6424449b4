import json

import pytest

from fedge.cli import main


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
    assert "eval_data: required" in caplog.text and "rounds: must be a positive integer" in caplog.text


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit):
        main(["teleport"])
