"""TriggerBook (runtime/trigger/book.py) on its own: which frame answers which trigger, deadlines both
ways, duplicates, bad part ids and shutdown. Frames and clocks are built here, so every case is exact."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from edge_somad.runtime.messaging.verdict import Verdict
from edge_somad.runtime.trigger.book import TriggerBook
from edge_somad.runtime.trigger.control import ControlRequest
from tests.helpers.poll import wait_until


@dataclass
class Item:  # the FrameItem fields the book reads
    camera: str
    frame_id: int
    monotonic: float


@dataclass
class Cam:
    id: str
    frames: int = 0
    read_errors: int = 0


class Replies:
    """Stands in for the control server: collects every answer sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.cond = threading.Condition()

    def _queue_reply(self, envelope, payload) -> None:
        with self.cond:
            self.sent.append(payload)
            self.cond.notify_all()


class Pub:
    def __init__(self) -> None:
        self.headers: list[dict] = []

    def publish_verdict(self, header, heatmap=b"", overlay=None) -> int:
        self.headers.append(header)
        return len(self.headers) - 1


def make_book(cameras=("cam0",), deadline_ms=10_000):
    pub, replies = Pub(), Replies()
    book = TriggerBook([Cam(c) for c in cameras], pub, {"name": "standin", "onnx_sha256": "ab" * 32}, 0.5,
                       threading.Condition(), deadline_ms)
    return book, pub, replies


def trigger(book, replies, part_id, at, **body):
    req = ControlRequest(replies, [b"id", b""], {"cmd": "trigger", "part_id": part_id, **body}, (time.time(), at))
    return book.handle(req)


def publish(book, item, verdict="pass"):
    """What the pipeline's publishing thread does for one scored frame."""
    v, fields = book.claim(item, Verdict(verdict, None, 0.1, 0.5))
    header = {"camera": item.camera, "frame_id": item.frame_id, "verdict": v.verdict, "error": v.error,
              "published_at": time.time(), **(fields or {})}
    book.finish(item, header)
    return header


SELECTION = [  # (trigger times, frame times, frame index chosen per trigger)
    ([10.0], [9.0, 9.99, 10.01, 10.5], [2]),  # frames before the trigger are never used
    ([10.0], [10.0, 10.2], [1]),  # captured AT the trigger instant is not after it
    ([10.0, 10.001], [10.1, 10.2, 10.3], [0, 1]),  # two triggers in one frame interval: one frame each
    ([10.0, 12.0], [10.5, 11.0, 11.5, 12.5], [0, 3]),  # frames between parts are skipped
]


@pytest.mark.parametrize(("triggers", "frames", "chosen"), SELECTION)
def test_each_trigger_gets_the_first_frame_captured_after_it(triggers, frames, chosen):
    book, _, replies = make_book()
    now = time.monotonic()  # far-away deadlines: selection alone is under test
    for i, t in enumerate(triggers):
        assert trigger(book, replies, f"P-{i}", now + t) is None
    items = [Item("cam0", i, now + t) for i, t in enumerate(frames)]
    selected = book.select(items)
    assert [it.frame_id for it in selected] == chosen
    for it in selected:
        publish(book, it)
    assert [(r["part_id"], r["frame_id"], r["ok"]) for r in replies.sent] == \
        [(f"P-{i}", c, True) for i, c in enumerate(chosen)]
    assert book.counts["frames_skipped"] == len(frames) - len(chosen)
    book.close("test")


def test_a_frame_skipped_just_before_its_trigger_was_registered_is_still_used():
    """The trigger is stamped on receipt; the frame after it may be taken before the book knows it."""
    book, _, replies = make_book()
    now = time.monotonic()
    assert book.select([Item("cam0", 0, now + 1.0), Item("cam0", 1, now + 2.0)]) == []  # no trigger yet
    trigger(book, replies, "P-1", now + 1.5)  # stamped between the two frames
    chosen = book.select([])
    assert [it.frame_id for it in chosen] == [1]
    book.close("test")


def test_deadline_without_a_frame_is_an_error_answer_at_the_deadline_and_published():
    book, pub, replies = make_book()
    t0 = time.monotonic()
    trigger(book, replies, "P-late", t0, deadline_ms=80)
    assert wait_until(lambda: replies.sent, 5.0)
    took = time.monotonic() - t0
    answer = replies.sent[0]
    assert answer["verdict"] == "error" and answer["error"].startswith("deadline: no frame") and not answer["ok"]
    assert answer["part_id"] == "P-late" and answer["frame_used"] is False
    assert 0.08 <= took < 0.5, took  # at the deadline, not silence and not much later
    assert [h["part_id"] for h in pub.headers] == ["P-late"]  # the stream sees the reject too
    # a frame arriving later is not used for it
    assert book.select([Item("cam0", 0, time.monotonic())]) == []
    book.close("test")


def test_deadline_stays_quiet_when_the_verdict_is_in_time():
    book, pub, replies = make_book()
    t0 = time.monotonic()
    trigger(book, replies, "P-ok", t0, deadline_ms=100)
    (item,) = book.select([Item("cam0", 3, t0 + 0.001)])
    header = publish(book, item)
    assert header["verdict"] == "pass" and header["error"] is None
    time.sleep(0.2)  # past the deadline: the watchdog must not answer a second time
    assert len(replies.sent) == 1 and replies.sent[0]["ok"] is True and replies.sent[0]["verdict"] == "pass"
    assert book.counts["deadline"] == 0 and pub.headers == []  # the pipeline publishes scored frames itself
    book.close("test")


def test_a_verdict_ready_after_the_deadline_becomes_a_deadline_error():
    book, _, replies = make_book()
    t0 = time.monotonic()
    trigger(book, replies, "P-slow", t0, deadline_ms=50)
    (item,) = book.select([Item("cam0", 0, t0 + 0.001)])
    assert wait_until(lambda: replies.sent, 5.0)  # the watchdog answers while "scoring" goes on
    assert replies.sent[0]["error"].startswith("deadline: frame 0 not scored")
    header = publish(book, item, "pass")  # the frame's verdict, published late, agrees with the answer
    assert header["verdict"] == "error" and header["error"].startswith("deadline: scored")
    assert len(replies.sent) == 1
    book.close("test")


def test_duplicate_part_id_is_reported_not_scored_twice():
    book, _, replies = make_book()
    t0 = time.monotonic()
    trigger(book, replies, "P-7", t0)
    (item,) = book.select([Item("cam0", 0, t0 + 0.01)])
    publish(book, item, "fail")
    again = trigger(book, replies, "P-7", t0 + 0.02)
    assert again["ok"] is False and again["duplicate"] is True and "duplicate" in again["error"]
    assert again["first"]["verdict"] == "fail" and again["first"]["frame_id"] == 0
    assert book.select([Item("cam0", 1, t0 + 0.03)]) == []  # nothing waits for a second frame
    # while the first is still waiting, too
    trigger(book, replies, "P-8", t0)
    assert trigger(book, replies, "P-8", t0)["first"]["state"] == "pending"
    book.close("test")


@pytest.mark.parametrize(("part_id", "words"), [
    ("", "part_id ''"), ("P\x001", "control"), ("x" * 65, "64"), ("P-1\n", "part_id"), (12, "part_id 12"),
    (None, "part_id None"), (" P", "leading"),
])
def test_bad_part_ids_are_refused_with_what_arrived(part_id, words):
    book, _, replies = make_book()
    answer = trigger(book, replies, part_id, time.monotonic())
    assert answer["ok"] is False and answer["verdict"] == "error" and words in answer["error"]
    assert book.counts["refused"] == 1 and book.snapshot()["waiting"] == 0
    book.close("test")


@pytest.mark.parametrize(("body", "words"), [
    ({"deadline_ms": 0}, "deadline_ms 0"), ({"deadline_ms": "300"}, "deadline_ms '300'"),
    ({"deadline": 300}, "unknown field"), ({"camera": "cam9"}, "cam9"), ({"camera": "../x"}, "camera id"),
])
def test_bad_trigger_fields_are_refused(body, words):
    book, _, replies = make_book()
    answer = trigger(book, replies, "P-1", time.monotonic(), **body)
    assert answer["ok"] is False and words in answer["error"], answer["error"]
    book.close("test")


def test_several_cameras_need_a_camera_name():
    book, _, replies = make_book(("left", "right"))
    assert "name one" in trigger(book, replies, "P-1", time.monotonic())["error"]
    assert trigger(book, replies, "P-2", time.monotonic(), camera="right") is None
    book.close("test")


def test_shutdown_answers_waiting_triggers_and_refuses_new_ones():
    book, pub, replies = make_book()
    trigger(book, replies, "P-wait", time.monotonic())
    book.stop_accepting("signal SIGTERM")
    refused = trigger(book, replies, "P-new", time.monotonic())
    assert refused["ok"] is False and refused["error"] == "not scored: shutdown (signal SIGTERM)"
    book.close("signal SIGTERM")
    assert [(r["part_id"], r["error"]) for r in replies.sent] == [("P-wait", "not scored: shutdown (signal SIGTERM)")]
    assert [h["part_id"] for h in pub.headers] == ["P-wait"]


def test_software_trigger_is_asked_for_the_frame_and_its_failure_answered():
    class Triggerable(Cam):
        def __init__(self, cid, fail=False):
            super().__init__(cid)
            self.fired, self.fail = 0, fail

        def software_trigger(self):
            self.fired += 1
            if self.fail:
                raise OSError("camera not in trigger mode")

    for fail in (False, True):
        replies, cam = Replies(), Triggerable("cam0", fail)
        book = TriggerBook([cam], Pub(), {}, 0.5, threading.Condition(), 10_000)
        assert trigger(book, replies, "P-1", time.monotonic()) is None
        assert cam.fired == 1
        if fail:
            assert "camera trigger failed: OSError: camera not in trigger mode" in replies.sent[0]["error"]
        else:
            assert replies.sent == []
        book.close("test")
