import pytest

from fedge.transport import BrokerConfig


def test_broker_urls_carry_credentials_and_tls():
    plain = BrokerConfig.from_url("mqtt://edge:s%40cret@broker.local:1884")
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == ("broker.local", 1884, "edge", "s@cret", False)
    secure = BrokerConfig.from_url("mqtts://broker.local", ca_certs="/etc/ca.pem")
    assert (secure.port, secure.tls, secure.ca_certs) == (8883, True, "/etc/ca.pem")
    assert BrokerConfig.from_url("mqtt://u@h", username="other").username == "other"
    assert BrokerConfig.from_url("127.0.0.1:1999").port == 1999


def test_unknown_schemes_are_refused():
    with pytest.raises(ValueError, match="scheme"):
        BrokerConfig.from_url("http://broker")


def test_the_protocol_may_be_named_in_the_url_and_secrets_are_kept_out_of_records():
    from fedge.transport import redact_url

    assert BrokerConfig.from_url("mqtt://h:1?protocol=3.1.1").protocol == "3.1.1"
    assert BrokerConfig.from_url("mqtt://h:1").protocol == "auto"
    with pytest.raises(ValueError, match="protocol"):
        BrokerConfig.from_url("mqtt://h:1?protocol=4")
    with pytest.raises(ValueError, match="protocol"):
        BrokerConfig.from_url("mqtt://h:1?qos=2")
    config = BrokerConfig.from_url("mqtt://edge:s3cret@h:1")
    assert "s3cret" not in repr(config)
    assert redact_url("mqtt://edge:s3cret@h:1?protocol=5") == "mqtt://edge:***@h:1?protocol=5"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"


def test_frames_queued_while_the_broker_is_away_count_as_unacknowledged_and_never_raise():
    """paho raises from ``is_published`` for a frame it could not queue (no connection): a coordinator asking how
    much of a device's work is out, during a broker restart, must get a count, not an exception that ends the run."""
    import paho.mqtt.client as mqtt

    from fedge.transport import MqttTransport, Queued, acknowledged

    refused = mqtt.MQTTMessageInfo(1)
    refused.rc = mqtt.MQTT_ERR_NO_CONN
    with pytest.raises(RuntimeError):
        refused.is_published()
    assert acknowledged(refused) is False
    transport = MqttTransport(BrokerConfig.from_url("mqtt://127.0.0.1:9"), client_id="never-connected")
    queued = transport.enqueue_frames("fedge/x", [b"one", b"two"])
    assert transport.wait_sent([queued, Queued([refused], 3)], timeout_s=0.05) == 3


def test_an_mqtt5_probe_of_the_embedded_broker_falls_back_without_a_traceback():
    """amqtt speaks 3.1.1 only: a plain mqtt:// URL probes MQTT 5 first; the broker's side of the refused probe is
    one debug line, not a traceback on the operator's screen."""
    import subprocess
    import sys

    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from fedge.broker import EmbeddedBroker\nfrom fedge.transport import BrokerConfig, MqttTransport\n"
        "with EmbeddedBroker() as broker:\n"
        "    client = MqttTransport(BrokerConfig.from_url(broker.url.split('?')[0]), client_id='probe')\n"
        "    client.connect(); print('protocol', client.protocol); client.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "protocol 3.1.1" in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Errno 107" not in done.stderr
