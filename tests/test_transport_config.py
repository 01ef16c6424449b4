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
