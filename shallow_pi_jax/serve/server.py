"""openpi's websocket policy protocol, so an unmodified `openpi_client.WebsocketClientPolicy` works.

Per connection: the server first sends the policy metadata (one binary msgpack-numpy frame). Then
each binary frame from the client is an observation dict, answered by one binary frame with the
policy's reply (`actions`, `state`, `policy_timing`) plus `server_timing` ({"infer_ms", and from the
second request on "prev_total_ms"}, as openpi). A request that fails (undecodable, not a dict, an
array that is not bool/int/float, a missing field, wrong shape or dtype, NaN) is answered with a
text frame holding the error, which the client raises as RuntimeError; unlike openpi the
connection stays open and the server keeps serving. A refused request (ValueError) is one short
line naming the field, what was expected and what came; any other failure is a server bug and
carries its traceback. `GET /healthz` answers 200 "OK".

Frames are at most `max_frame_bytes` (default DEFAULT_MAX_FRAME_BYTES = 16 MiB: three 640×480 RGB
cameras as float32 are 11.1 MB, the largest observation any preset sends; at openpi's 224×224 they
are 1.8 MB). websockets reads a frame's length from its header and refuses a longer one before
buffering it, closing the connection with code 1009 (message too big); that is the one refusal
that ends the connection. At most MAX_QUEUE frames wait per connection, so one connection holds
at most about (MAX_QUEUE + 1) × max_frame_bytes.

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
from websockets.frames import CloseCode

from shallow_pi_jax.serve import wire

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 16 * 2**20
MAX_QUEUE = 4  # frames read ahead per connection; requests are answered one at a time anyway


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
                 host: str = "0.0.0.0", port: int = 8000, max_workers: int = 1,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes: expected >= 1, got {max_frame_bytes}")
        self.max_frame_bytes = int(max_frame_bytes)
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
                    obs = wire.unpackb(message)  # refuses unsafe arrays before numpy sees them
                    if not isinstance(obs, dict):
                        raise ValueError(f"request: expected an observation dict, got {type(obs).__name__}")
                    infer_start = time.monotonic()
                    reply = await loop.run_in_executor(self._executor, self._infer, obs)
                    reply = _to_wire(reply)
                    reply["server_timing"] = {"infer_ms": 1000 * (time.monotonic() - infer_start)}
                    if prev_total_ms is not None:
                        reply["server_timing"]["prev_total_ms"] = prev_total_ms
                    data = packer.pack(reply)
                except ValueError as e:  # a refused request: the message says what to fix
                    self.errors += 1
                    log.warning("request from %s refused: %s", peer, e, exc_info=log.isEnabledFor(logging.DEBUG))
                    await ws.send(str(e) or type(e).__name__)
                    continue
                except Exception as e:  # noqa: BLE001 - a server bug: report it to this client, keep serving
                    self.errors += 1
                    log.exception("request from %s failed", peer)
                    await ws.send(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
                    continue
                self.requests_served += 1
                await ws.send(data)
                prev_total_ms = 1000 * (time.monotonic() - start)
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self.errors += 1
                log.warning("closed %s: a frame over max_frame_bytes=%d (%s)", peer, self.max_frame_bytes,
                            e.sent.reason)
        finally:
            log.info("client disconnected: %s", peer)

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, self.host, self.port, compression=None, max_size=self.max_frame_bytes,
                         max_queue=MAX_QUEUE, process_request=self._health) as server:
            self.port = server.sockets[0].getsockname()[1]
            # Logged once bound: the real port (also for port=0), and a sign that clients may connect.
            log.info("listening on ws://%s:%d", self.host, self.port)
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
