"""Peers cannot hurt each other: a stalled subscriber loses only its own messages, and one peer's
many subscriptions count once. Real sockets on 127.0.0.1, counts not sleeps."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zmq

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.subscriber import SeqCounter
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import H, W, free_port, make_model_dir, write_video
from tests.test_runtime_pipeline import Collector

N = 300


def _stalled(endpoint: str) -> zmq.Socket:
    """A subscriber that never reads, with the smallest buffers, so its queue fills at once."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SUBSCRIBE, b"somad/")
    sock.connect(endpoint)
    return sock


def test_stalled_subscriber_loses_its_own_messages_not_the_others(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)] * (N // 4)  # big overlays
    video = write_video(tmp_path / "v.avi", frames)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    with Publisher(endpoint) as pub, OrtScorer(model_dir / "model.onnx", H, W) as scorer:
        stalled = _stalled(endpoint)
        fast = Collector(endpoint)
        assert pub.wait_for_subscribers(2, 5.0)
        fast.start()
        # pictures on every verdict, so the messages are big enough to fill the stalled peer's buffers
        config = PipelineConfig(overlay=True, heatmap="f16", heartbeat_s=0.02, heatmap_passes=1)
        final = Pipeline(scorer, manifest, [("c", SourceSpec("file", str(video)))], pub, config).run()
        fast.join(30)
    stalled_msgs = []
    while stalled.poll(200):
        stalled_msgs.append(messages.parse_message(stalled.recv_multipart()))
    stalled.close()
    beats = [m.header for m in fast.msgs if m.kind == "heartbeat"]
    assert final["published"] == N and final["sent"]["c"] == N
    assert [v["seq"] for v in fast.verdicts()] == list(range(N))  # every verdict, in order
    assert final["sent"]["_heartbeat"] >= 5 and [b["seq"] for b in beats] == list(range(final["sent"]["_heartbeat"]))
    assert fast.msgs[-1].header["event"] == "final"
    assert final["subscribers"] == 2
    # The stalled one lost messages, and can count exactly how many from seq + the final's `sent`.
    got = [m for m in stalled_msgs if m.kind == "verdict"]
    assert len(got) < N
    seq = SeqCounter()
    for m in stalled_msgs:
        seq.see(m.topic, m.header)
    seq.see_final("somad", final)
    assert len(got) + seq.missed.get("somad/c", 0) == N - got[0].header["seq"]


def test_many_subscriptions_from_one_peer_count_once() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(endpoint) as pub:
        noisy = zmq.Context.instance().socket(zmq.SUB)
        noisy.setsockopt(zmq.LINGER, 0)
        for i in range(50):
            noisy.setsockopt(zmq.SUBSCRIBE, f"somad/x{i}".encode())
        noisy.connect(endpoint)
        deadline = time.monotonic() + 5
        while pub.subscriptions_seen < 50 and time.monotonic() < deadline:
            _ = pub.subscribers
            time.sleep(0.01)
        assert pub.subscriptions_seen == 50 and pub.subscribers == 1
        assert not pub.wait_for_subscribers(5, 0.2)  # 50 subscriptions, but one peer
        others = [connect_subscriber(endpoint, b"somad/") for _ in range(4)]
        assert pub.wait_for_subscribers(5, 5.0) and pub.subscribers == 5
        noisy.close()
        deadline = time.monotonic() + 5
        while pub.subscribers != 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.subscribers == 4  # a peer that leaves is no longer counted
        for s in others:
            s.close()


def test_seq_counter_gaps_restarts_and_tail() -> None:
    seq = SeqCounter()
    assert seq.see("somad/a", {"seq": 5}) == 0  # joined late: earlier messages are not ours to count
    assert seq.see("somad/a", {"seq": 6}) == 0
    assert seq.see("somad/a", {"seq": 9}) == 2
    assert seq.see("somad/b", {"seq": 0}) == 0 and seq.see("somad/b", {"seq": 1}) == 0
    assert seq.see("somad/a", {"seq": 0}) == 0 and seq.restarts == 1  # publisher restarted
    assert seq.see("somad/a", {}) == 0  # an older publisher without seq
    seq.see_final("somad", {"sent": {"a": 4, "b": 2}})  # a: last seen 0, sent 4 -> 3 lost at the end
    assert seq.missed == {"somad/a": 5} and seq.total == 5
