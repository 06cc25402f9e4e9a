"""openpi's websocket policy protocol, so an unmodified `openpi_client.WebsocketClientPolicy` works.

Per connection: the server first sends the policy metadata (one binary msgpack-numpy frame). Then
each binary frame from the client is an observation dict, answered by one binary frame with the
policy's reply (`actions`, `state`, `policy_timing`) plus `server_timing` ({"infer_ms", and from the
second request on "prev_total_ms"}, as openpi). A request that fails (undecodable, not a dict,
missing field, wrong shape) is answered with a text frame holding the error, which the client
raises as RuntimeError; unlike openpi the connection stays open and the server keeps serving.
`GET /healthz` answers 200 "OK".

Inference runs in a worker thread (one at a time: one accelerator), so the event loop keeps
accepting, reading and writing for every other client meanwhile; a client that is slow to send or
to read its reply only delays itself.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shallow_pi_jax.serve import wire

log = logging.getLogger(__name__)


def _to_wire(tree):
    """numpy-only copy of a reply (jax arrays and numpy scalars become what msgpack-numpy packs)."""
    if isinstance(tree, Mapping):
        return {str(k): _to_wire(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_to_wire(v) for v in tree]
    if hasattr(tree, "__array__") and not isinstance(tree, (np.ndarray, np.generic)):
        return np.asarray(tree)
    return tree


class PolicyServer:
    """Serves `infer(obs) -> dict` with `metadata` over websockets.

        server = PolicyServer(policy.infer, policy.metadata, host="0.0.0.0", port=8000)
        server.serve_forever()                  # blocking; or: port = server.start_in_thread()
    """

    def __init__(self, infer: Callable[[dict], dict], metadata: Mapping | None = None, *,
                 host: str = "0.0.0.0", port: int = 8000, max_workers: int = 1):
        self._infer = infer
        self._metadata = _to_wire(dict(metadata or {}))
        self.host, self.port = host, port
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                               thread_name_prefix="policy-infer")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.requests_served = 0
        self.errors = 0

    # -- protocol ---------------------------------------------------------------------------
    @staticmethod
    def _health(connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        log.info("client connected: %s", peer)
        packer = wire.Packer()
        loop = asyncio.get_running_loop()
        prev_total_ms = None
        try:
            await ws.send(packer.pack(self._metadata))
            while True:
                message = await ws.recv()
                start = time.monotonic()
                try:
                    if isinstance(message, str):
                        raise ValueError("request: expected a binary msgpack frame, got a text frame")
                    try:
                        obs = wire.unpackb(message)
                    except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
                        raise ValueError(f"request: not a msgpack-numpy message ({type(e).__name__}: {e})") from e
                    if not isinstance(obs, dict):
                        raise ValueError(f"request: expected an observation dict, got {type(obs).__name__}")
                    infer_start = time.monotonic()
                    reply = await loop.run_in_executor(self._executor, self._infer, obs)
                    reply = _to_wire(reply)
                    reply["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - infer_start)}
                    if prev_total_ms is not None:
                        reply["server_timing"]["prev_total_ms"] = prev_total_ms
                    data = packer.pack(reply)
                except Exception as e:  # noqa: BLE001 - report to this client, keep serving
                    self.errors += 1
                    log.warning("request from %s failed: %s: %s", peer, type(e).__name__, e)
                    await ws.send(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
                    continue
                self.requests_served += 1
                await ws.send(data)
                prev_total_ms = 1000 * (time.monotonic() - start)
        except ConnectionClosed:
            pass
        finally:
            log.info("client disconnected: %s", peer)

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, self.host, self.port, compression=None, max_size=None,
                         process_request=self._health) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self.run())
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def start_in_thread(self, timeout: float = 30.0) -> int:
        """Start serving in a daemon thread; returns the bound port (use port=0 for a free one)."""
        self._thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start within {timeout} s")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
