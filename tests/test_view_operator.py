"""`edge-somad view` for operators: big verdict, last-N strip, shift counters, alarms with acknowledge,
driven through a real ZeroMQ stream and checked in a real headless chromium."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("aiohttp", reason="edge-somad[view] (aiohttp) is not installed")

from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.view.view import BackgroundView, ViewConfig
from tests.helpers.runtime import free_port
from tests.test_view import _chrome, get_state, wait_for

CAM = "st3"
BLACK = {"state": "alarm", "reasons": ["camera fault: black frame (mean luma 0.0 < 16, std 0.0)"], "fault": "black"}
OK = {"state": "ok", "reasons": [], "fault": None}


def verdict(frame_id: int, v: str, part: str | None = None) -> dict:
    h = messages.verdict_header(
        camera=CAM, frame_id=frame_id, captured_at=time.time(), published_at=time.time(),
        score=0.9 if v == "fail" else None if v == "error" else 0.1, threshold=0.5, verdict=v,
        error="camera fault: black frame" if v == "error" else None, defects=[], model={}, heatmap=None,
        frame_shape=(120, 160), overlay=False)
    return {**h, "part_id": part} if part else h


def health(state: dict) -> dict:
    return {"schema": messages.STATUS_SCHEMA, "event": "health", "camera": CAM, "previous": "ok",
            "state": state["state"], "reasons": state["reasons"], "new_reasons": state["reasons"],
            "health": state, "at": time.time()}


def _text(find) -> str:
    """An element's text, or "" while the page is redrawing it (found but replaced before read)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return find().text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def post(url: str, body: object, content_type: str = "application/json", origin: str | None = None) -> tuple:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": content_type, **({"Origin": origin} if origin else {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_operator_station_in_headless_chromium() -> None:
    browser = _chrome()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0, strip_n=10)) as view, \
                Publisher(endpoint) as pub:
            browser.get(view.url)
            assert pub.wait_for_subscribers(1, 10.0)
            tile = f'section.tile[data-camera="{CAM}"]'
            css = lambda sel: browser.find_element("css selector", sel)  # noqa: E731
            indicator = lambda: css(f"{tile} .indicator")  # noqa: E731

            def shows(word: str) -> bool:
                try:
                    el = indicator()
                    return el.text.startswith(word) and word.lower() in el.get_attribute("class")
                except Exception:  # the tile is created by the first verdict
                    return False

            # the big indicator follows the verdicts, both ways, and is large
            for i, (v, word) in enumerate([("pass", "PASS"), ("fail", "FAIL"), ("pass", "PASS"), ("error", "ERROR")]):
                pub.publish_verdict(verdict(i, v))
                assert wait_for(lambda w=word: shows(w)), (word, indicator().text)
            size = browser.execute_script(f"return parseFloat(getComputedStyle(document.querySelector('{tile} "
                                          ".indicator')).fontSize)")
            assert size >= 96  # px: ~2.5 cm cap height on a 24" full-HD screen, readable at 2 m

            # the strip keeps the last 10 results, oldest first, coloured by verdict, named by part or frame
            sent = [("pass", None), ("fail", "P-77"), ("error", None)] * 10
            for j, (v, part) in enumerate(sent):
                pub.publish_verdict(verdict(4 + j, v, part))
            assert wait_for(lambda: css("#total-verdicts").text == "34")
            cells = browser.find_elements("css selector", f"{tile} .strip span")
            assert len(cells) == 10
            want = [(v, part or f"#{4 + j}") for j, (v, part) in enumerate(sent)][-10:]
            assert [(c.get_attribute("class"), c.get_attribute("title").split(":")[0]) for c in cells] == want
            assert shows("ERROR") and "#33" in indicator().text

            # shift counters: since shift start, reset by the button; the run's own counts stay
            assert [css(f"#shift-{v}").text for v in ("pass", "fail", "error")] == ["12", "11", "11"]
            css("#shift-reset").click()
            assert wait_for(lambda: [css(f"#shift-{v}").text for v in ("pass", "fail", "error")] == ["0", "0", "0"])
            pub.publish_verdict(verdict(34, "fail"))
            assert wait_for(lambda: css(f"{tile} .s-fail").text == "1" and css("#shift-fail").text == "1")
            assert css(f"{tile} .n-fail").text == "12" and css(f"{tile} .s-pass").text == "0"

            # an alarm: listed active, still listed once cleared until acknowledged; acknowledge removes it
            assert css("#alarm-count").text == "(none)"
            pub.publish_status(health(BLACK))
            item = lambda: css("#alarm-list li")  # noqa: E731
            item_text = lambda: _text(item)  # noqa: E731
            assert wait_for(lambda: css("#alarm-count").text == "(1)")
            assert "ACTIVE · unacknowledged" in item().text and "black" in item().text
            # a tile in alarm keeps its layout: the indicator spans the tile (alarm list styles stay off tiles)
            assert wait_for(lambda: "alarm" in css(tile).get_attribute("class").split())
            assert indicator().size["width"] >= 0.8 * css(tile).size["width"]
            pub.publish_status(health(OK))
            assert wait_for(lambda: "cleared · unacknowledged" in item_text()), item_text()
            stale = get_state(view.url)["alarms"][0]
            item().find_element("css selector", "button.ack").click()
            assert wait_for(lambda: css("#alarm-count").text == "(none)"), css("#alarm-list").text
            assert get_state(view.url)["alarms"] == [] and css("#action-error").text == ""

            # the actions are guarded: another site's page, a form post, an outdated acknowledge
            ack, reset = view.url + "api/alarms/ack", view.url + "api/shift/reset"
            assert post(reset, {}, origin="http://evil.example")[0] == 403
            assert post(reset, {}, content_type="text/plain")[0] == 415
            assert post(ack, {"key": stale["key"], "event_id": "00" * 16})[0] == 409
            assert post(ack, {"key": stale["key"]})[0] == 400
            assert post(ack, {"key": stale["key"], "event_id": stale["event_id"]})[0] == 409  # acked since
            assert get_state(view.url)["shift"]["counts"]["fail"] == 1  # no refused reset went through
    finally:
        browser.quit()
