"""`edge-somad view`: a local web page showing one or more `run` streams live, per camera.

aiohttp serves the page (runtime/view/view_page.html) and a WebSocket (/ws) that pushes what changed a
few times a second; /api/state gives the same as JSON. One ZeroMQ SUB thread per endpoint (CURVE
keys work as for `subscribe`) decodes messages with runtime/messaging/subscriber.receive and updates
runtime/view/view_state.ViewState. Loopback by default: the page shows production pictures.

A receiver that fails is logged, shown as `failed` on the page and restarted after a second; a
stream that goes quiet is shown `stale` within `stale_s`: the page never looks alive when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edge_somad.contracts import defaults
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging.curve import CurveClient
from edge_somad.runtime.messaging.intake import DEFAULT_LIMITS, DecodeLimits
from edge_somad.runtime.view.view_state import STALE_S, STRIP_N, ViewState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewConfig:
    endpoints: tuple[str, ...] = (defaults.ENDPOINT,)
    topic: str = "somad/"
    host: str = "127.0.0.1"
    port: int = 8080
    n_fails: int = 8
    strip_n: int = STRIP_N  # results in each camera's strip
    push_s: float = 0.25  # WebSocket update period: 4 Hz is live to an eye and cheap for a line PC
    limits: DecodeLimits = DEFAULT_LIMITS
    stale_s: float = STALE_S
    restart_s: float = 1.0  # pause before a failed receiver opens its socket again

    def __post_init__(self) -> None:
        if not self.stale_s > 0 or not self.restart_s > 0:
            raise ConfigError(f"stale_s {self.stale_s}, restart_s {self.restart_s}; expected seconds > 0")
        if not self.endpoints:
            raise ConfigError(f"no --connect endpoint given; expected at least one, e.g. {defaults.ENDPOINT}")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ConfigError(f"--connect endpoints {list(self.endpoints)} repeat; give each run once")
        if not 1 <= self.strip_n <= 500:
            raise ConfigError(f"--strip {self.strip_n}; expected 1..500 results per camera")
        if self.n_fails < 0 or self.push_s <= 0 or not 0 <= self.port <= 65535:
            raise ConfigError(f"--fails {self.n_fails}, push period {self.push_s}, --port {self.port}; expected "
                              "fails >= 0, period > 0, port 0..65535")


def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError as exc:
        raise ConfigError("edge-somad view needs aiohttp, which is not installed; "
                          "install it with `pip install 'edge-somad[view]'`") from exc
    return web


class _Receiver(threading.Thread):
    """One SUB socket on one `run` endpoint, feeding the shared ViewState until stopped."""

    def __init__(self, endpoint: str, config: ViewConfig, state: ViewState, curve: CurveClient | None) -> None:
        super().__init__(name=f"view-sub-{endpoint}", daemon=True)
        self.endpoint, self.config, self.state, self.curve = endpoint, config, state, curve
        self.stop_event = threading.Event()

    def run(self) -> None:
        from edge_somad.runtime.messaging.subscriber import SubscribeResult

        result = SubscribeResult()  # kept across restarts: rejected/missed count for the whole view
        while not self.stop_event.is_set():
            try:
                self._receive(result)
            except Exception as exc:  # never a silent dead thread behind a page that looks alive
                log.exception("view receiver for %s failed; restarting in %.1f s", self.endpoint,
                              self.config.restart_s)
                self.state.receiver_failed(self.endpoint, f"{type(exc).__name__}: {exc}")
                self.stop_event.wait(self.config.restart_s)

    def _receive(self, result: Any) -> None:
        import zmq

        from edge_somad.runtime.messaging.curve import connect_subscriber
        from edge_somad.runtime.messaging.subscriber import receive

        sock = connect_subscriber(self.endpoint, self.config.topic.encode(), self.curve,
                                  max_part_bytes=self.config.limits.max_part_bytes)
        try:
            while not self.stop_event.is_set():
                if sock.poll(200, zmq.POLLIN):
                    msg = receive(sock.recv_multipart(), result, limits=self.config.limits)
                    if msg is not None:
                        self.state.apply(self.endpoint, msg)
                    self.state.counts(self.endpoint, result.rejected, result.missed)
        finally:
            sock.close()


def make_app(config: ViewConfig, curve: CurveClient | None = None) -> Any:
    """The aiohttp application; its startup opens the SUB sockets, its cleanup closes them."""
    web = _aiohttp()
    state = ViewState(list(config.endpoints), config.n_fails, config.stale_s, config.strip_n)
    page = resources.files("edge_somad.runtime.view").joinpath("view_page.html").read_text(encoding="utf-8")
    receivers = [_Receiver(e, config, state, curve) for e in config.endpoints]
    state.alive = {r.endpoint: r.is_alive for r in receivers}

    async def index(_request: Any) -> Any:
        return web.Response(text=page, content_type="text/html")

    async def api_state(_request: Any) -> Any:
        return web.json_response(state.changes({}))

    async def reset_shift(request: Any) -> Any:
        await _action_body(web, request)
        return web.json_response({"shift_start": state.reset_shift()})

    async def acknowledge(request: Any) -> Any:
        from edge_somad.runtime.health.alarms import AckError

        body = await _action_body(web, request)
        key, event_id, comment = body.get("key"), body.get("event_id"), body.get("comment", "")
        if not isinstance(key, str) or not isinstance(event_id, str) or not isinstance(comment, str):
            raise web.HTTPBadRequest(text='expected {"key": "<camera>/<check>", "event_id": "<hex>", "comment": ""}')
        try:
            alarm = state.acknowledge(key[:300], bytes.fromhex(event_id[:64]), comment[:500])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"event_id {event_id[:70]!r} is not hex: {exc}") from exc
        except AckError as exc:
            raise web.HTTPConflict(text=str(exc)) from exc
        log.info("alarm %s acknowledged in the view (%s)", key, comment[:100])
        return web.json_response(alarm)

    async def websocket(request: Any) -> Any:
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        seen: dict[str, tuple[int, int, int]] = {}
        reader = asyncio.ensure_future(ws.receive())  # notices a closed page while we only send
        try:
            while not ws.closed and not reader.done():
                # JPEG rendering happens in changes(): off the event loop, so other pages stay live
                update = await asyncio.get_running_loop().run_in_executor(None, state.changes, seen)
                await ws.send_json(update)
                await asyncio.wait([reader], timeout=config.push_s)
        except (ConnectionResetError, RuntimeError):  # the page went away mid-send
            pass
        finally:
            reader.cancel()
        return ws

    async def start(_app: Any) -> None:
        for r in receivers:
            r.start()

    async def stop(_app: Any) -> None:
        for r in receivers:
            r.stop_event.set()
        for r in receivers:
            r.join(2.0)

    app = web.Application(client_max_size=ACTION_MAX_BYTES)
    app.add_routes([web.get("/", index), web.get("/api/state", api_state), web.get("/ws", websocket),
                    web.post("/api/shift/reset", reset_shift), web.post("/api/alarms/ack", acknowledge)])
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


ACTION_MAX_BYTES = 4096  # an action's JSON body: a key, an event id and a comment


async def _action_body(web: Any, request: Any) -> dict[str, Any]:
    """The JSON body of a POST that changes state (shift reset, acknowledge), from this page only.

    A page on another site can make the operator's browser POST here (the view has no login), but
    a browser sends such a request's Origin, and sends `Content-Type: application/json`
    cross-site only after a CORS preflight the view never answers: both are required."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text=f"Origin {origin[:100]!r} is not this page ({request.scheme}://{request.host})")
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=f"Content-Type {request.content_type!r}; expected application/json")
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def serve(config: ViewConfig, curve: CurveClient | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (aiohttp's run_app handles both)."""
    web = _aiohttp()
    from edge_somad.runtime.messaging.curve import connect_subscriber

    for endpoint in config.endpoints:  # a mistyped endpoint is an error now (exit 2), not a receiver that retries
        connect_subscriber(endpoint, config.topic.encode(), curve).close()
    app = make_app(config, curve)
    print(f"edge-somad view: http://{config.host}:{config.port}/  (watching {', '.join(config.endpoints)})",
          flush=True)
    web.run_app(app, host=config.host, port=config.port, print=None)


class BackgroundView:
    """The same app on a private event loop in a thread, on a free port (tests, notebooks)."""

    def __init__(self, config: ViewConfig, curve: CurveClient | None = None) -> None:
        self.config, self.curve = config, curve
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.app: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-server", daemon=True)

    def _run(self) -> None:
        web = _aiohttp()
        asyncio.set_event_loop(self.loop)
        self.app = make_app(self.config, self.curve)
        runner = web.AppRunner(self.app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.config.host, self.config.port)
        self.loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> BackgroundView:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("view server did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
