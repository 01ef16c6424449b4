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
