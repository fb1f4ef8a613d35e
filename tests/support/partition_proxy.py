"""A loopback TCP proxy that can be cut: a network partition between the function app and one
storage endpoint, without stopping the (shared) Azurite behind it.

`cut()` resets every open connection (pooled keep-alive connections fail on their next request)
and every new one at once (accepted, then closed with a TCP reset); `heal()` forwards again. The
port stays bound throughout: closing the listener would let the kernel hand the port to another
process's outgoing connection, and healing could then not listen there again. Clients see what a
partitioned region looks like: connections reset, never a slow answer.
"""

from __future__ import annotations

import socket
import struct
import threading


class PartitionProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port> until cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    @property
    def is_cut(self) -> bool:
        return self._cut

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)  # wakes a pump blocked in recv; close then sends a reset
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._cut:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                if self._cut:
                    self._reset(client)
                    upstream.close()
                    continue
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def cut(self) -> None:
        """Reset the open connections and every new one until healed."""
        with self._lock:
            self._cut = True
            conns, self._conns = list(self._conns), set()
        for s in conns:
            self._reset(s)

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.close()
