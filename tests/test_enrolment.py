"""fedge enroll: identities, credentials files, revocation, and the broker files built from them."""

import json
import stat

import pytest

from fedge.shell.cli import main
from fedge.trust.broker_files import write_mosquitto_files
from fedge.trust.enrolment import COORDINATOR_ID, Credentials, Enrolment, EnrolmentError, coordinator_credentials, device_credentials_path, enroll, revoke
from fedge.trust.keys import password_hash, password_matches


def test_enrolling_gives_each_device_a_private_credentials_file_and_the_coordinator_its_public_key(tmp_path):
    fleet = tmp_path / "fleet"
    paths = enroll(fleet, ["jetson-01", "laptop-01"])
    assert [path.name for path in paths] == ["jetson-01.credentials.json", "laptop-01.credentials.json"]
    for path in paths + [fleet / "coordinator.credentials.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    device = Credentials.load(paths[0])
    enrolment = Enrolment.load(fleet)
    assert enrolment.active() == ["jetson-01", "laptop-01"]
    assert enrolment.public_key("jetson-01").public_bytes_raw() == device.signing_key().public_key().public_bytes_raw()
    assert device.coordinator_key == enrolment.coordinator_key == Credentials.load(fleet / "coordinator.credentials.json").coordinator_key
    assert password_matches(device.broker_password, enrolment.devices["jetson-01"].password_hash)
    assert device.private_key not in repr(device) and device.broker_password not in repr(device)
    public = (fleet / "enrolment.json").read_text()
    assert device.private_key not in public and device.broker_password not in public
    with pytest.raises(EnrolmentError, match="already enrolled: jetson-01"):
        enroll(fleet, ["jetson-01"])
    with pytest.raises(ValueError):
        enroll(fleet, ["bad/id"])


def test_a_revoked_device_loses_its_key_and_broker_login_and_can_be_enrolled_afresh(tmp_path):
    fleet = tmp_path / "fleet"
    old = Credentials.load(enroll(fleet, ["a0", "a1"])[0])
    revoke(fleet, "a0")
    enrolment = Enrolment.load(fleet)
    assert enrolment.public_key("a0") is None and enrolment.active() == ["a1"]
    assert not device_credentials_path(fleet, "a0").exists()
    files = write_mosquitto_files(enrolment, tmp_path / "mosquitto")
    passwords, acl = (tmp_path / "mosquitto" / "passwords").read_text(), (tmp_path / "mosquitto" / "acl").read_text()
    assert "a0:" not in passwords and "a1:" in passwords and f"{COORDINATOR_ID}:" in passwords
    assert "user a1\ntopic write fedge/v1/agents/a1/up\n" in acl and "topic read fedge/v1/agents/a1/down" in acl and "a0" not in acl
    assert "allow_anonymous false" in files[-1].read_text()
    new = Credentials.load(enroll(fleet, ["a0"])[0])
    assert new.private_key != old.private_key and Enrolment.load(fleet).public_key("a0") is not None


def test_password_hashes_use_mosquittos_format():
    hashed = password_hash("secret", salt=b"0123456789ab")
    assert hashed.startswith("$7$101$") and password_matches("secret", hashed) and not password_matches("Secret", hashed)
    assert not password_matches("secret", "$6$abc$def") and not password_matches("secret", "plain")


def test_the_enroll_command_enrols_revokes_and_writes_broker_files(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    assert main(["enroll", "--fleet", str(fleet), "d1", "d2"]) == 0
    assert main(["enroll", "--fleet", str(fleet), "--revoke", "d2", "--mosquitto", str(tmp_path / "m"), "--tls-host", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert "enrolled d1" in out and "revoked d2" in out and "1 devices enrolled" in out
    assert {path.name for path in (tmp_path / "m").iterdir()} == {"passwords", "acl", "mosquitto.conf", "ca.crt", "server.crt", "server.key"}
    assert json.loads((fleet / "enrolment.json").read_text())["devices"]["d2"]["revoked"] is True
    assert coordinator_credentials(fleet).identity == COORDINATOR_ID
    assert main(["enroll", "--fleet", str(fleet), "d1"]) == 1  # already enrolled: a clear error, exit 1


def test_a_site_broker_bridges_only_the_sites_own_topics_with_its_central_login(tmp_path, capsys):
    central, site = tmp_path / "central", tmp_path / "site"
    enroll(central, ["site-a"])
    login = Credentials.load(device_credentials_path(central, "site-a"))
    assert main(["enroll", "--fleet", str(site), "jetson-01", "--mosquitto", str(tmp_path / "m"), "--port", "1884",
                 "--bridge-to", "mqtt://hub.example:1883", "--bridge-credentials", str(device_credentials_path(central, "site-a"))]) == 0
    conf = tmp_path / "m" / "mosquitto.conf"
    text = conf.read_text()
    assert "connection fedge-site-a\naddress hub.example:1883\n" in text and f"remote_username {login.broker_username}\nremote_password {login.broker_password}\n" in text
    bridged = [line for line in text.splitlines() if line.startswith("topic ")]
    assert bridged == [f"topic fedge/v1/agents/site-a/{lane}" for lane in ("up out 1", "beat out 0", "status out 1", "fetch out 1", "down in 1")]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the site's central password
    acl = (tmp_path / "m" / "acl").read_text()  # the site aggregator logs in as this broker's coordinator and uses the site's topics
    assert "user coordinator\ntopic write fedge/v1/agents/+/down\ntopic write fedge/v1/agents/site-a/up" in acl
    assert main(["enroll", "--fleet", str(site), "--mosquitto", str(tmp_path / "m2"), "--bridge-to", "mqtt://hub.example:1883"]) == 1


def test_enrolling_inside_a_git_work_tree_warns_unless_git_ignores_the_fleet(tmp_path, capsys):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert main(["enroll", "--fleet", str(tmp_path / "keys"), "a1"]) == 0
    assert "inside a git work tree, and git does not ignore it" in capsys.readouterr().out.replace("\n", " ")
    (tmp_path / ".gitignore").write_text("keys/\n")
    assert main(["enroll", "--fleet", str(tmp_path / "keys"), "a2"]) == 0
    assert "git work tree" not in capsys.readouterr().out
    assert main(["enroll", "--fleet", str(tmp_path.parent / f"{tmp_path.name}-outside"), "a1"]) == 0
    assert "git work tree" not in capsys.readouterr().out  # not in a repository at all


def test_this_repository_ignores_the_secrets_its_commands_write():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in ("fleet/enrolment.json", "fleet/devices/jetson-01.credentials.json", "broker/passwords", "broker/acl", "broker/server.key", "runs/demo/x"):
        assert subprocess.run(["git", "-C", str(root), "check-ignore", "-q", path]).returncode == 0, path
