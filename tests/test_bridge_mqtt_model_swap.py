"""The MQTT bridge re-sends its birth when `run` swaps the model: the `model_swapped` status event alone
is enough (real Mosquitto, real ZeroMQ, the bridge as a process)."""

from __future__ import annotations

import time
from pathlib import Path

from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from tests.helpers.bridges import Consumer, Mosquitto, heartbeat, start_bridge, verdict_count
from tests.helpers.runtime import free_port

NEW = {"name": "standin", "onnx_sha256": "cd" * 32, "backend": "onnxruntime", "precision": "fp32", "device": "cpu"}


def test_birth_is_sent_again_on_model_swapped(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="watcher")
    zmq_port = free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(["mqtt", "--connect", f"tcp://127.0.0.1:{zmq_port}", "--port", str(broker.port),
                          "--box", "box7", "--queue-file", str(tmp_path / "q.sqlite"), "--log-level", "info"], log)
    pub = Publisher(f"tcp://127.0.0.1:{zmq_port}", "somad", sndhwm=1000)
    try:
        deadline = time.monotonic() + 20
        while verdict_count("NBIRTH")(consumer.messages) == 0 and time.monotonic() < deadline:
            pub.publish_heartbeat(heartbeat(("c1",)))  # the old model, until the bridge is born
            consumer.wait_for(lambda m: verdict_count("NBIRTH")(m) >= 1, 0.2)
        first = consumer.json("NBIRTH")[-1]
        assert first["streams"][0]["model"]["onnx_sha256"] == "ab" * 32, log.read_text()
        born = verdict_count("NBIRTH")(consumer.messages)
        assert not consumer.wait_for(lambda m: verdict_count("NBIRTH")(m) > born, 1.0)  # quiet without news
        pub.publish_status({"schema": messages.STATUS_SCHEMA, "event": "model_swapped", "at": time.time(),
                            "ok": True, "action": "swap", "via": "watch", "old_sha256": "ab" * 32,
                            "new_sha256": "cd" * 32, "old_path": "/models/a", "new_path": "/models/b", "model": NEW,
                            "previous_model": first["streams"][0]["model"], "threshold": 0.7,
                            "self_check": "reference frame scored 1, export recorded 1", "swapped_at": time.time(),
                            "load_s": 0.1, "first_camera": "c1", "first_frame_id": 42})
        assert consumer.wait_for(lambda m: verdict_count("NBIRTH")(m) > born, 20), log.read_text()
        birth = consumer.json("NBIRTH")[-1]
        assert birth["streams"][0]["model"]["onnx_sha256"] == "cd" * 32 and birth["streams"][0]["threshold"] == 0.7
        assert birth["bdSeq"] == first["bdSeq"]  # the same session: a new birth, not a reconnect
    finally:
        bridge.terminate()
        bridge.wait(20)
        pub.close()
        consumer.close()
        broker.stop()
