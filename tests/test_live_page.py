"""The live fleet page in a real headless Chromium (Debian's), served by the coordinator's live server from a monitor
fed as the coordinator feeds it; /metrics parsed as Prometheus parses it."""

import json
import shutil
import time
import urllib.request
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.liveness import Liveness
from fedge.coordinator.live_server import LiveServer, parse_address
from fedge.coordinator.monitor import RunFacts, RunMonitor
from fedge.coordinator.plans import DevicePlan
from fedge.coordinator.registry import AgentRecord, Registry
from fedge.profiles import load_catalogue_profile

HOSTILE = '<img src=x id=injected onerror="document.title=1">'


def _fleet(now: float) -> tuple[Registry, dict[str, DevicePlan]]:
    registry = Registry(Liveness(30.0, lambda: None))
    plans = {}
    for index, (agent_id, profile) in enumerate((("jetson-1", "jetson-orin-nano-8gb"), ("laptop-1", "laptop-rtx3060-6gb"), ("pi-1", "raspberry-pi-5-8gb"))):
        device = load_catalogue_profile(profile)
        if agent_id == "laptop-1":
            device = replace(device, name=HOSTILE)  # a device's own words reach the page
        plan = DevicePlan(agent_id, profile, feasible=index < 2, reason="" if index < 2 else "needs 9.1 GB, has 6.2 GB", quantization="nf4", layers=(28, 29), ranks=(16, 8), batch_size=8, local_steps=10)
        registry.register(AgentRecord(agent_id, device, 400, (), plan=plan if plan.feasible else None))
        plans[agent_id] = plan
        registry.liveness.heard(agent_id, now - 3 * index)
    return registry, plans


@pytest.fixture
def live(tmp_path):
    monitor = RunMonitor(RunFacts("field-1", 5, "accuracy", lambda: 4))
    server = LiveServer("127.0.0.1:0", monitor, tmp_path)
    server.start()
    yield monitor, server
    server.close()


def _get(url: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, dict(answer.headers), answer.read()


def test_status_and_metrics_follow_the_monitor(live, tmp_path):
    monitor, server = live
    assert json.loads((tmp_path / "live.json").read_text())["url"] == server.url
    with pytest.raises(urllib.error.HTTPError) as starting:
        _get(server.url + "api/status")
    assert starting.value.code == 503
    registry, plans = _fleet(time.time())
    monitor.enter("training", 2)
    monitor.heartbeat("jetson-1", "training", 3, 4, 10, time.time())
    monitor.heartbeat("laptop-1", "training", 3, 11, 10, time.time())  # more steps done than planned: not shown
    monitor.on_record({"round": 1, "accuracy": 0.61, "loss": 1.2, "metric": "accuracy", "contributors": ["jetson-1", "laptop-1"], "rejected": {"pi-1": "norm_too_large"},
                       "left_out": {"pi-1": "late: no update before the round closed"}, "bytes_up": {"jetson-1": 1000, "laptop-1": 3000}, "bytes_down": {"jetson-1": 500},
                       "refused_messages": {"forged": 3}, "server_aggregate_s": 0.2, "evaluation_s": 4.0})
    monitor.snapshot(registry, plans, set(), updates_in=1, updates_expected=2)
    status = json.loads(_get(server.url + "api/status")[2])
    states = {device["agent_id"]: (device["state"], device["step"], device["steps"]) for device in status["devices"]}
    assert states == {"jetson-1": ("training", 4, 10), "laptop-1": ("training", 0, 0), "pi-1": ("refused", 0, 0)}
    assert status["curve"] == [[1, 0.61]] and status["phase"] == "training" and status["round"] == 2
    code, headers, body = _get(server.url + "metrics")
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for family in text_string_to_metric_families(body.decode()) for sample in family.samples}
    assert samples[("fedge_devices", (("state", "enrolled"),))] == 4 and samples[("fedge_devices", (("state", "refused"),))] == 1
    assert samples[("fedge_devices", (("state", "online"),))] == 2 and samples[("fedge_devices", (("state", "planned"),))] == 2
    assert samples[("fedge_phase", (("fedge_phase", "training"),))] == 1 and samples[("fedge_round", ())] == 2
    assert samples[("fedge_updates_accepted_total", ())] == 2 and samples[("fedge_updates_refused_total", (("reason", "norm_too_large"),))] == 1
    assert samples[("fedge_devices_left_out_total", (("reason", "late"),))] == 1 and samples[("fedge_messages_refused_total", (("reason", "forged"),))] == 3
    assert samples[("fedge_bytes_total", (("direction", "up"),))] == 4000 and samples[("fedge_heldout", (("measure", "accuracy"),))] == 0.61
    assert samples[("fedge_evaluation_seconds_count", ())] == 1 and samples[("fedge_round_updates", (("kind", "in"),))] == 1
    assert headers["X-Content-Type-Options"] == "nosniff" and "default-src 'none'" in headers["Content-Security-Policy"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(server.url + "../etc/passwd")
    assert missing.value.code == 404


def test_reason_labels_stay_bounded():
    monitor = RunMonitor(RunFacts("r", 1, "accuracy", lambda: None))
    monitor.on_record({"round": 1, "left_out": {f"d{index}": f"reason-{index}: text" for index in range(100)}})
    labels = {sample.labels["reason"] for family in monitor.metrics.registry.collect() if family.name == "fedge_devices_left_out" for sample in family.samples if "reason" in sample.labels}
    assert len(labels) == 25 and "other" in labels


def test_addresses_are_checked():
    assert parse_address("127.0.0.1:8470") == ("127.0.0.1", 8470) and parse_address("[::1]:0") == ("::1", 0)
    for bad in ("8470", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="live_address"):
            parse_address(bad)


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None, reason="Debian's chromium and chromium-driver are not installed")
def test_the_fleet_page_in_headless_chromium(live):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monitor, server = live
    registry, plans = _fleet(time.time())
    monitor.enter("training", 2)
    monitor.heartbeat("jetson-1", "training", 3, 4, 10, time.time())
    for number, score in ((0, 0.42), (1, 0.55)):
        monitor.on_record({"round": number, "accuracy": score, "loss": 1.0, "metric": "accuracy"})
    monitor.snapshot(registry, plans, set(), updates_in=0, updates_expected=2)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#devices tr")) == 3)
        rows = {row.get_attribute("data-device"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in browser.find_elements(By.CSS_SELECTOR, "#devices tr")}
        assert rows["jetson-1"][2:4] == ["training", "4/10"] and rows["jetson-1"][4].startswith("nf4 · rank 16 · 2 layers")
        assert rows["pi-1"][2] == "refused" and "needs 9.1 GB" in rows["pi-1"][4]
        assert rows["laptop-1"][1] == HOSTILE and not browser.find_elements(By.ID, "injected") and browser.title == "fedge fleet"
        assert browser.find_element(By.ID, "run").text == "field-1" and browser.find_element(By.ID, "round").text == "2"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#curve circle")) == 2
        monitor.heartbeat("jetson-1", "training", 3, 9, 10, time.time())  # the page follows without a reload
        monitor.on_record({"round": 2, "accuracy": 0.6, "loss": 0.9, "metric": "accuracy"})
        monitor.snapshot(registry, plans, set(), updates_in=1, updates_expected=2)
        wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#devices tr[data-device='jetson-1'] td:nth-child(4)").text == "9/10")
        wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#curve circle")) == 3)
        assert browser.find_element(By.ID, "updates").text == "1 / 2"
    finally:
        browser.quit()


def test_a_connection_that_sends_nothing_is_dropped(tmp_path, monkeypatch):
    import socket

    import fedge.coordinator.live_server as live_server

    monkeypatch.setattr(live_server, "REQUEST_TIMEOUT_S", 0.5)
    server = LiveServer("127.0.0.1:0", RunMonitor(RunFacts("r", 1, "accuracy", lambda: None)), tmp_path)
    server.start()
    try:
        with socket.create_connection(server.httpd.server_address[:2], timeout=30) as idle:
            assert idle.recv(1024) == b""  # closed by the server, not by this timeout
        assert _get(server.url)[0] == 200  # and it still serves
    finally:
        server.close()
