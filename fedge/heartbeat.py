"""A device's heartbeat thread: its sign of life, whatever its main thread is doing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fedge.transport import MqttTransport
from fedge.wire import Heartbeat, topics

log = logging.getLogger(__name__)


def start_heartbeat(transport: MqttTransport, agent_id: str, every_s: float, stopped: threading.Event, status: Callable[[], tuple[str, int, int, int]]) -> threading.Thread:
    """Every ``every_s`` until ``stopped``, a heartbeat with the (state, round, step, steps) ``status()`` reports, on
    the device's heartbeat lane at QoS 0 and its own signing stream: queued, never waited on, skipped while
    disconnected."""

    def beat() -> None:
        while not stopped.wait(every_s):
            if not transport.connected:
                continue
            try:
                state, round_number, step, steps = status()
                transport.enqueue(topics.heartbeat(agent_id), Heartbeat(agent_id, state, time.time(), round_number, step=step, steps=steps), stream="beat", qos=0)
            except Exception as error:  # never let the heartbeat thread die
                log.debug("%s: heartbeat not sent: %s", agent_id, error)

    thread = threading.Thread(target=beat, name=f"heartbeat-{agent_id}", daemon=True)
    thread.start()
    return thread
