"""The live view over HTTP, read-only, on its own threads: ``/`` the fleet page, ``/api/status`` the latest
``RunStatus`` as JSON, ``/metrics`` the Prometheus metrics. Nothing it serves changes the run; it listens on the
config's ``live_address`` (loopback by default) and writes its URL to ``RUN_DIR/live.json`` for ``fedge status``."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedge.coordinator.monitor import RunMonitor
from fedge.files import write_file_atomic

log = logging.getLogger(__name__)

LIVE_FILE = "live.json"
REQUEST_TIMEOUT_S = 10.0
PAGE = resources.files("fedge.coordinator").joinpath("live_page.html").read_bytes()
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
}


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (port 0: any free port) as a pair; ``ValueError`` names what is wrong."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"live_address: expected host:port, e.g. 127.0.0.1:8470 (got {address!r})")
    return host.strip("[]"), int(port)


class LiveServer:
    def __init__(self, address: str, monitor: RunMonitor, run_dir: Path):
        host, port = parse_address(address)
        self.monitor = monitor
        self.live_file = Path(run_dir) / LIVE_FILE
        self.httpd = ThreadingHTTPServer((host, port), _handler(monitor))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="fedge-live", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> str:
        self._thread.start()
        self.live_file.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.live_file, json.dumps({"url": self.url, "pid": os.getpid()}), mode=0o644)  # readers poll for it: never half written
        log.info("live fleet page: %s (Prometheus metrics at %smetrics; `fedge status %s` in a terminal)", self.url, self.url, self.live_file.parent)
        return self.url

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.live_file.unlink(missing_ok=True)


def _handler(monitor: RunMonitor) -> type[BaseHTTPRequestHandler]:
    class LiveHandler(BaseHTTPRequestHandler):
        server_version = "fedge-live"
        timeout = REQUEST_TIMEOUT_S  # a client that sends nothing is dropped, so idle connections cannot pile up

        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._answer(200, "text/html; charset=utf-8", PAGE)
            if path == "/api/status":
                status = monitor.status()
                if status is None:
                    return self._answer(503, "application/json", b'{"error": "starting"}')
                return self._answer(200, "application/json", json.dumps(status.to_dict()).encode())
            if path == "/metrics":
                return self._answer(200, CONTENT_TYPE_LATEST, generate_latest(monitor.metrics.registry))
            return self._answer(404, "text/plain; charset=utf-8", b"not found\n")

        def _answer(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the http.server signature)
            log.debug("live view: " + format, *args)

    return LiveHandler


class LiveView:
    """A run's monitor and, where the config gives an address, the server that shows it."""

    def __init__(self, monitor: RunMonitor, address: str | None, run_dir: Path):
        self.monitor = monitor
        self.server = LiveServer(address, monitor, run_dir) if address else None

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
