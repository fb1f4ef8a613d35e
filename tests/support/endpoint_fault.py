"""A loopback endpoint in front of Azurite's table service that can forward, refuse or black-hole.

`forward()` relays bytes both ways; `refuse()` closes the listening socket and every open
connection, so new connections are refused (a closed loopback port); `black_hole()` accepts
connections and never answers. Threads and sockets are the test's own and stop at `close()`.
"""

from __future__ import annotations

import select
import socket
import threading


class EndpointFault:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.mode = "forward"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepting = self._start(self._accept)

    def _start(self, fn, *args) -> threading.Thread:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)
        return thread

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed (refuse or close)
            with self._lock:
                self._sockets.append(conn)
            if self.mode == "forward":
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                with self._lock:
                    self._sockets.append(upstream)
                self._start(self._relay, conn, upstream)
            # black hole: the connection stays open, nothing is read or sent

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set() and self.mode == "forward":
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                s.close()

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def black_hole(self) -> None:
        """Accept connections and never answer; open (pooled) connections are dropped."""
        self.mode = "black_hole"
        self._drop_connections()

    def refuse(self) -> None:
        """Close the port: connections are refused."""
        self.mode = "refuse"
        self._listener.close()
        self._accepting.join(timeout=5)
        self._drop_connections()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._drop_connections()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
