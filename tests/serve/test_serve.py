"""The websocket server against the real openpi-client package: protocol, errors, concurrency, slow clients."""
import socket
import struct
import threading
import time
import urllib.request

import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from shallow_pi_jax.serve.policy import load_policy
from shallow_pi_jax.serve.server import PolicyServer
from shallow_pi_jax.serve.testing import tiny_config, write_tiny_checkpoint

TIMEOUT = 20.0


def _echo_infer(obs):
    """Fast fake policy: checks the request like a real one and echoes a function of it."""
    if "state" not in obs:
        raise ValueError("observation: missing 'state'")
    state = np.asarray(obs["state"], np.float32)
    if obs.get("prompt") == "slow":
        time.sleep(0.5)
    return {"actions": np.tile(2 * state, (4, 1)), "policy_timing": {"infer_ms": 0.1}}


@pytest.fixture
def echo_server():
    server = PolicyServer(_echo_infer, {"kind": "echo", "horizon": 4}, host="127.0.0.1", port=0)
    port = server.start_in_thread()
    yield server, port
    server.stop()


def test_openpi_client_protocol_with_real_policy(tmp_path):
    root = write_tiny_checkpoint(tmp_path / "student", tiny_config(depth=1))
    policy = load_policy(root, env="libero", tokenizer_path=root / "tokenizer.model", noise_seed=1)
    server = PolicyServer(policy.infer, policy.metadata, host="127.0.0.1", port=0)
    port = server.start_in_thread()
    try:
        client = WebsocketClientPolicy("127.0.0.1", port)
        meta = client.get_server_metadata()
        assert meta["env"] == "libero" and meta["action_horizon"] == 5 and meta["robot_action_dim"] == 7
        rng = np.random.default_rng(0)
        obs = {"observation/image": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
               "observation/wrist_image": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
               "observation/state": rng.normal(size=8).astype(np.float32), "prompt": "reach the blue block"}
        first = client.infer(obs)
        second = client.infer(obs)
        assert first["actions"].shape == (5, 7) and first["actions"].dtype == np.float32
        # Fixed noise: the same observation gives the same actions, and the server adds the reply locally.
        np.testing.assert_array_equal(first["actions"], second["actions"])
        np.testing.assert_array_equal(first["actions"], policy.infer(obs)["actions"])
        assert first["server_timing"]["infer_ms"] > 0 and "prev_total_ms" not in first["server_timing"]
        assert second["server_timing"]["prev_total_ms"] >= second["server_timing"]["infer_ms"] * 0
        assert "infer_ms" in first["policy_timing"]
    finally:
        server.stop()


def test_healthz(echo_server):
    _, port = echo_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_malformed_requests_get_errors_and_the_connection_keeps_serving(echo_server):
    server, port = echo_server
    client = WebsocketClientPolicy("127.0.0.1", port)
    assert client.get_server_metadata() == {"kind": "echo", "horizon": 4}
    with pytest.raises(RuntimeError, match="missing 'state'"):
        client.infer({"prompt": "no state"})
    out = client.infer({"state": np.arange(3, dtype=np.float32)})  # same connection still works
    np.testing.assert_array_equal(out["actions"][0], [0, 2, 4])

    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", open_timeout=TIMEOUT) as ws:
        ws.recv(timeout=TIMEOUT)  # metadata
        ws.send(b"\xc1\xc1 not msgpack")
        assert "not a msgpack-numpy message" in ws.recv(timeout=TIMEOUT)
        ws.send(msgpack_numpy.packb([1, 2, 3]))
        assert "expected an observation dict" in ws.recv(timeout=TIMEOUT)
        ws.send("a text frame")
        assert "expected a binary msgpack frame" in ws.recv(timeout=TIMEOUT)
        ws.send(msgpack_numpy.packb({"state": np.ones(2, np.float32)}))
        reply = msgpack_numpy.unpackb(ws.recv(timeout=TIMEOUT))
        np.testing.assert_array_equal(reply["actions"], np.full((4, 2), 2, np.float32))
    assert server.errors == 4
    # Other clients were never affected.
    assert WebsocketClientPolicy("127.0.0.1", port).infer({"state": np.ones(1, np.float32)})["actions"].shape == (4, 1)


def test_concurrent_clients_get_their_own_answers(echo_server):
    server, port = echo_server
    results, errors = {}, []

    def run(i):
        try:
            client = WebsocketClientPolicy("127.0.0.1", port)
            results[i] = [client.infer({"state": np.full(3, i * 10 + k, np.float32)})["actions"][0, 0]
                          for k in range(5)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors and not any(t.is_alive() for t in threads)
    assert results == {i: [2.0 * (i * 10 + k) for k in range(5)] for i in range(6)}
    assert server.requests_served == 30


def test_slow_clients_do_not_block_others(echo_server):
    _, port = echo_server
    # 1: a TCP client stuck half-way through the HTTP upgrade.
    stalled_handshake = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    stalled_handshake.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # 2: a websocket client that sent the first 10 bytes of a 1000-byte frame and stalls.
    stalled_frame = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", open_timeout=TIMEOUT, close_timeout=0.5)
    stalled_frame.recv(timeout=TIMEOUT)
    header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", 1000) + b"\x01\x02\x03\x04"
    stalled_frame.socket.sendall(header + b"\x00" * 10)
    # 3: a client that keeps sending and never reads its replies.
    flooding = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", open_timeout=TIMEOUT, close_timeout=0.5)
    for _ in range(50):
        flooding.send(msgpack_numpy.packb({"state": np.ones(2000, np.float32)}))
    try:
        client = WebsocketClientPolicy("127.0.0.1", port)
        start = time.monotonic()
        for k in range(10):
            assert client.infer({"state": np.full(2, k, np.float32)})["actions"][0, 0] == 2 * k
        assert time.monotonic() - start < 10.0
    finally:
        stalled_handshake.close()
        stalled_frame.close()
        flooding.close()


def test_one_slow_inference_does_not_stop_metadata_or_health(echo_server):
    _, port = echo_server
    slow = WebsocketClientPolicy("127.0.0.1", port)
    t = threading.Thread(target=slow.infer, args=({"state": np.ones(1, np.float32), "prompt": "slow"},))
    t.start()
    time.sleep(0.05)
    start = time.monotonic()
    assert WebsocketClientPolicy("127.0.0.1", port).get_server_metadata()["kind"] == "echo"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as r:
        assert r.status == 200
    assert time.monotonic() - start < 0.4  # answered while the 0.5 s inference is still running
    t.join(TIMEOUT)
