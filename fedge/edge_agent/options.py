"""``fedge agent``'s options: one schema gives the command line its flags, help and defaults, and checks the values
(all problems at once, each naming its flag) before anything heavy is imported."""

from __future__ import annotations

from pydantic import Field

from fedge.config_schema import Section
from fedge.wire.topics import AGENT_ID


class AgentOptions(Section):
    """An edge agent (``fedge agent``)."""

    broker: str = Field(description="mqtt://[user@]host:port or mqtts://…; password from FEDGE_MQTT_PASSWORD")
    data: str = Field(description="JSON lines in the task's format: {text, label}, {instruction, input?, response} or {messages}")
    credentials: str | None = Field(None, description="this device's credentials file from `fedge enroll` (its id, signing key and broker login)")
    id: str | None = Field(None, pattern=AGENT_ID.pattern, description="this device's id: 1-64 letters, digits, '.', '_' or '-' (default: the credentials' id)")
    insecure: bool = Field(False, description="run without credentials: unsigned, for a coordinator with insecure: true")
    device_profile: str | None = Field(None, description="simulate this catalogue device (its memory limit, speed and links) on this machine's backend")
    device: str | None = Field(None, description="torch device (default: cuda if available)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")
    save: str | None = Field(None, description="save the final adapter here")
    eval_data: str | None = Field(None, description="held-out JSON lines in the same format: report the task's score after every round")
    heartbeat: float = Field(10.0, gt=0, description="seconds between heartbeats (sent from their own thread, whatever the agent is doing)")
    cache: str | None = Field(None, description="where backbone packages are kept, by digest (default $FEDGE_CACHE/received)")
    slowdown: float = Field(1.0, ge=1, description="make every training step take this many times as long: emulate a slower device (field trials)")
    receipt_wait: float = Field(30.0, gt=0, description="seconds to wait for the coordinator's receipt of an update before sending it again (doubling each time)")
    max_line_kb: int = Field(1024, ge=1, description="refuse a data line longer than this many KiB (before it is parsed or tokenized)")
    no_label_counts: bool = Field(False, description="never tell the coordinator how many examples of each label this device holds, even when its strategy asks")
    wait_broker: float = Field(0.0, ge=0, description="where nothing answers at the broker's address yet (a device booting before its network, a broker starting), try again each second for this many seconds; 0: fail at once")
    username: str | None = Field(None, description="broker user name (password from FEDGE_MQTT_PASSWORD) instead of the credentials' login")
    ca_certs: str | None = Field(None, description="CA bundle that signed the broker's certificate (mqtts://)")
    certfile: str | None = Field(None, description="client certificate for mutual TLS")
    keyfile: str | None = Field(None, description="private key of the client certificate")
