"""Endpoints that fail the ways a region fails, for the CLI outage matrix: refusing, black-holed,
refusing our key (403), and connection-string surgery to point a setting at them."""

from __future__ import annotations

import base64
import re
import socket
import threading

from devtools.azurite import free_port


class BlackHole:
    """A loopback port that accepts every connection and never answers (a region whose load balancer
    still takes connections). `close()` drops every connection and stops listening."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self._held.append(conn)  # never read from, never written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


def refusing_port() -> int:
    """A loopback port nothing listens on (bound once to get it, then closed): connections are refused."""
    return free_port()


def redirect(connection_string: str, port: int) -> str:
    """The same connection string with every service endpoint moved to 127.0.0.1:`port` (same account path)."""
    return re.sub(r"(\w+Endpoint=http://)[^/;]+", lambda m: f"{m.group(1)}127.0.0.1:{port}", connection_string)


def wrong_key(connection_string: str) -> str:
    """The same connection string with a valid-looking key the account does not have (HTTP 403)."""
    key = base64.b64encode(b"not-this-account" * 4).decode()
    return re.sub(r"AccountKey=[^;]+", f"AccountKey={key}", connection_string)
