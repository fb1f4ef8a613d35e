"""A TCP proxy on loopback that puts a region at a distance: every chunk is forwarded one-way
delay later, in each direction, so a request-response costs one round trip (2 x one-way) more.

A chunk is held from its arrival, not from when the previous one left (a link's latency, no
bandwidth limit), and order is kept. Connections stay open as the client keeps them (HTTP
keep-alive works); the TCP handshake itself is not delayed.

    with LatencyProxy(target_port=10000, rtt_ms=30) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/westeu"
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

log = logging.getLogger(__name__)


class ProxyProcess:
    """The proxy in a process of its own (as the network is: its CPU and GIL are not the
    measured process's). `port` is where clients connect. Stops only the process it started."""

    def __init__(self, target_port: int, rtt_ms: float) -> None:
        self.target_port, self.rtt_ms = target_port, rtt_ms
        self.port: int | None = None
        self._process = None

    def __enter__(self) -> "ProxyProcess":
        import subprocess
        import sys

        self._process = subprocess.Popen([sys.executable, "-m", "bench.latency_proxy", str(self.target_port),
                                          str(self.rtt_ms)], stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self._process.kill()
            self._process.wait()
            raise RuntimeError(f"latency proxy did not start (printed {line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - it must not outlive the benchmark
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()


class LatencyProxy:
    """In-process proxy thread; `port` is where clients connect, `rtt_ms` the injected round trip."""

    def __init__(self, target_port: int, rtt_ms: float, *, target_host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.one_way = rtt_ms / 2000.0
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> "LatencyProxy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _handle(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        pipes = asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer),
                               return_exceptions=True)
        try:
            await pipes
        except asyncio.CancelledError:
            pipes.cancel()
            await asyncio.gather(pipes, return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        """Read chunks as they come; a second task sends each one `one_way` after its arrival."""
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if chunk is None:
                    break
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.one_way, chunk or None))
                if not chunk:
                    break
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            try:
                writer.close()
            except RuntimeError:
                pass


def main() -> None:
    """python -m bench.latency_proxy <target_port> <rtt_ms>: prints the listening port, runs until killed."""
    import signal
    import sys

    proxy = LatencyProxy(int(sys.argv[1]), float(sys.argv[2]))
    proxy.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(proxy.port, flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    proxy.stop()


if __name__ == "__main__":
    main()
