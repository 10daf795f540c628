"""Sparkplug mode through a broker restart (no verdict lost) and with a primary host's STATE."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.poll import wait_until
from tests.test_bridge_sparkplug import SpbLine, bd_seq, births, header, verdicts

N, RATE = 1000, 100.0
STOP_AT = 300  # verdict index at which the broker goes away for OUTAGE_S while the line keeps going
OUTAGE_S = 3.0
# The host's session is persistent; Mosquitto keeps QoS 0 messages for it while it reconnects too
# (Sparkplug births and data are QoS 0), so the host sees what the bridge sent once the broker was back.
BROKER_CONF = "allow_anonymous true\nqueue_qos0_messages true\n"


def test_no_verdict_lost_across_a_broker_restart(tmp_path: Path) -> None:
    with SpbLine(tmp_path, ("c1", "c2"), "--primary-host", "scada", host_id="scada", host_online=True,
                 broker_conf=BROKER_CONF) as line:
        host, run, log, broker = line.host, line.run, line.log, line.broker
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 2, 30), log.read_text()
        assert run.pub.wait_for_subscribers(1, 10)
        t0 = time.monotonic()
        for i in range(N):
            if i == STOP_AT:
                broker.stop()
                stopped_at = time.monotonic()
            if i > STOP_AT and broker.proc.poll() is not None and time.monotonic() - stopped_at >= OUTAGE_S:
                broker.start()
            run.pub.publish_verdict(header(i))
            time.sleep(max(0.0, t0 + (i + 1) / RATE - time.monotonic()))  # the line's pace, not a wait
        assert host.wait_for(lambda m: len(verdicts(host.check()[1])) == N, 60), log.read_text()[-3000:]
    errors, data = host.check()
    assert errors == [], errors[:10]
    got = verdicts(data)
    assert set(got) == {(("c1", "c2")[i % 2], i // 2) for i in range(N)}
    assert len({bd_seq(b) for b in births(host)}) >= 2, "a new session after the restart: new births"
    # The new session's births came first; then the verdicts kept on disk during the outage, in order.
    first_bd = bd_seq(births(host)[0])
    new_birth = next(i for i, m in enumerate(host.messages) if m.kind == "NBIRTH" and bd_seq(m.payload) != first_bd)
    first_seen: dict[tuple[str, int], int] = {}
    for d, v in data:
        first_seen.setdefault((d, v["Inspection/Verdict Seq"]), v["_at"])
    for camera in ("c1", "c2"):
        late = sorted((at, vseq) for (d, vseq), at in first_seen.items() if d == camera and at > new_birth)
        assert len(late) >= 50, f"{camera}: {len(late)} verdicts delivered in the new session"
        assert [vseq for _, vseq in late] == sorted(vseq for _, vseq in late), f"{camera}: out of order"
        assert all(at < new_birth for (d, vseq), at in first_seen.items() if d == camera and vseq < late[0][1])
    log_text = log.read_text()
    assert "Traceback" not in log_text and log_text.count("connected to MQTT broker") >= 2


def _log_count(log: Path, text: str) -> int:
    return log.read_text().count(text) if log.exists() else 0


def test_births_wait_for_the_primary_host_and_follow_it(tmp_path: Path) -> None:
    waiting = "is offline: no births until its STATE says online"
    with SpbLine(tmp_path, ("c1",), "--primary-host", "scada", host_id="scada", host_online=False) as line:
        host, run, log = line.host, line.run, line.log
        assert wait_until(lambda: _log_count(log, waiting) >= 1, 30), log.read_text()
        assert run.pub.wait_for_subscribers(1, 10)
        assert host.of("NBIRTH") == []  # the host is offline: the node does not birth
        host.set_online(True)
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 1, 20), log.read_text()
        first = bd_seq(births(host)[0])

        host.set_online(False)  # the node must end its session: an NDEATH, then wait again
        assert host.wait_for(lambda m: len(host.of("NDEATH")) >= 1, 20), log.read_text()
        assert bd_seq(host.of("NDEATH")[0].payload) == first
        assert wait_until(lambda: _log_count(log, waiting) >= 2, 20), log.read_text()
        assert len(host.of("NBIRTH")) == 1
        host.set_online(True)  # back: births of a new session
        assert host.wait_for(lambda m: len(host.of("NBIRTH")) >= 2, 20), log.read_text()
        assert bd_seq(births(host)[-1]) == (first + 1) % 256
        errors, _ = host.check()
        assert errors == [], errors
