"""MQTT topic layout (documented in the README).

    {root}/agents/{agent_id}/status   retained "online"/"offline"; the agent's Last Will sets "offline"
    {root}/agents/{agent_id}/up       agent -> coordinator: hello, update, evaluation
    {root}/agents/{agent_id}/beat     agent -> coordinator: heartbeats, QoS 0 (a missed one is stale anyway); the
                                      coordinator keeps only each device's newest and never reads one ahead of updates
    {root}/agents/{agent_id}/down     coordinator -> agent: assignment, global state, reject, backbone parts
    {root}/agents/{agent_id}/fetch    agent -> coordinator's backbone server: backbone requests
"""

from __future__ import annotations

import re

DEFAULT_ROOT = "fedge/v1"
AGENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_agent_id(agent_id: str) -> str:
    """Agent ids become topic levels, so MQTT wildcards and separators are refused."""
    if not AGENT_ID.match(agent_id):
        raise ValueError(f"agent id {agent_id!r} must be 1-64 of letters, digits, '.', '_' or '-'")
    return agent_id


def status(agent_id: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/status"


def uplink(agent_id: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/up"


def heartbeat(agent_id: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/beat"


def downlink(agent_id: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/down"


def fetch(agent_id: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/{check_agent_id(agent_id)}/fetch"


def all_fetches(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/+/fetch"


def all_uplinks(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/+/up"


def all_heartbeats(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/agents/+/beat"


def is_heartbeat(topic: str) -> bool:
    return topic.endswith("/beat")


def agent_of(topic: str, root: str = DEFAULT_ROOT) -> str | None:
    """The agent id in an agent topic, or None if the topic is not one."""
    prefix = f"{root}/agents/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    return parts[0] if len(parts) == 2 and AGENT_ID.match(parts[0]) else None
