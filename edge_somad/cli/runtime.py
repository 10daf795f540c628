"""`edge-somad run`, `subscribe`, `view` and `keys` as typer command functions.

Each behind the one error handler (cli/options.handle_errors); registered by edge_somad/cli/__init__.py.
Heavy imports (cv2, zmq, onnxruntime) live inside the bodies so `edge-somad --help` works anywhere.
`python -m edge_somad.cli.runtime run|subscribe|keys ...` runs them without the main CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_somad.cli.options import (
    CurveClientSecret,
    CurveServerKey,
    LogLevel,
    MaxMessageMb,
    OptFile,
    handle_errors,
    setup_logging,
)
from edge_somad.contracts import defaults
from edge_somad.contracts.exits import EXIT_NOT_MET


@handle_errors
def run(
    camera: Annotated[list[str], typer.Option(
        "--camera", help="Source, repeatable: camera index (0), video file, image folder, rtsp:// or "
        "http(s):// URL, or a GigE Vision / USB3 Vision camera aravis:<device>?exposure_us=..&gain_db=..&"
        "trigger=off|software|line0..&pixel=Mono8|BayerRG8|.. (docs/cameras.md); name it with id=spec "
        "(default ids cam0, cam1, ...).")],
    model: Annotated[Path, typer.Option("--model", help="Model directory holding manifest.json.")],
    backend: Annotated[str, typer.Option(help="auto | tensorrt | onnxruntime | torch")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (never changed silently)")] = "fp32",
    publish: Annotated[str, typer.Option(
        help="ZeroMQ endpoint to bind the PUB socket to; loopback by default, tcp://*:5556 serves the network."
    )] = defaults.ENDPOINT,
    topic_prefix: Annotated[str, typer.Option(help="Topics are <prefix>/<camera-id>.")] = "somad",
    heatmap: Annotated[str, typer.Option(help="png (8-bit, 0..2x threshold) | f16 | none")] = "png",
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Add a JPEG overlay.")] = False,
    heatmap_passes: Annotated[int, typer.Option(help="Heatmap/overlay on every n-th pass per camera (1: all, "
        "0: none); fails and errors always carry theirs.")] = 10,
    max_frames: Annotated[Optional[int], typer.Option(help="Stop after N verdicts in total.")] = None,  # noqa: UP045
    queue_size: Annotated[int, typer.Option(help="Frames buffered per camera (live: oldest dropped).")] = 2,
    max_batch: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Frames per scorer call, across cameras, oldest first. Default: the number of cameras (within the "
        "graph's batch limit) for a scorer that takes whole batches (GPU). ONNX Runtime on a CPU: one frame per "
        "call on all cores, and while a backlog lasts one frame per core side by side (single-threaded runs: more "
        "frames/s, each slower); 1: never side by side; N: up to N side by side whenever N are waiting.")] = None,
    batch_wait_ms: Annotated[float, typer.Option(
        help="How long a partial batch waits for the other cameras' frames, from its oldest frame's arrival "
        "(0: never; unused for ONNX Runtime on a CPU, which takes what is waiting).")] = 5.0,
    wait_subscribers: Annotated[int, typer.Option(
        help="Wait (<= 10 s) for this many subscriptions before scoring (demos/tests).")] = 0,
    send_queue: Annotated[int, typer.Option(
        help="Messages queued per subscriber; beyond that THAT subscriber loses messages (counted by it from seq).")
    ] = 100,
    drain_timeout: Annotated[float, typer.Option(
        help="On SIGTERM/SIGINT: seconds to score queued frames; the rest get error 'not scored: shutdown'.")] = 5.0,
    curve_secret_key: Annotated[OptFile, typer.Option(
        help="CURVE: the publisher's secret key file (NAME.key_secret from `edge-somad keys`). Needs --curve-clients.")
    ] = None,
    curve_clients: Annotated[OptFile, typer.Option(
        help="CURVE: folder of the public key files (NAME.key) of the only subscribers allowed to connect.")] = None,
    health: Annotated[bool, typer.Option("--health/--no-health", help="Camera-fault and drift monitoring "
        "(docs/messages.md, heartbeat cameras.<id>.health).")] = True,
    frozen_s: Annotated[float, typer.Option(help="Identical frames for this long (and --frozen-frames of them): "
        "the camera is frozen, its frames get error verdicts.")] = 3.0,
    frozen_frames: Annotated[int, typer.Option(help="Identical frames in a row needed for 'frozen'.")] = 10,
    input_warn_z: Annotated[float, typer.Option(help="Input drift warn: brightness/contrast/sharpness this many "
        "std from the fit images (rolling mean).")] = 4.0,
    input_alarm_z: Annotated[float, typer.Option(help="Input drift alarm level (std).")] = 8.0,
    score_window: Annotated[int, typer.Option(help="Scores (pass and fail) in the score-drift window, compared "
        "with the calibration scores by a two-sample KS test (docs/health.md).")] = 200,
    fail_rate_warn: Annotated[float, typer.Option(help="Health warn when this share of the last 50 parts "
        "failed.")] = 0.2,
    fail_rate_alarm: Annotated[float, typer.Option(help="Health alarm at this fail share.")] = 0.5,
    camera_timeout: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="End the run with exit code 1 when a camera has delivered no frame for this many seconds "
        "(cannot open, reconnecting or stalled). Default: keep retrying.")] = None,
    stall_s: Annotated[float, typer.Option(
        help="A running live camera with no frame for 5 frame intervals, and at least this many seconds, is "
        "`stalled`. Cameras triggered through aravis (trigger=software|lineN) are never stalled; for other "
        "triggered cameras set it above the longest gap between parts.")] = 1.0,
    camera_alarm: Annotated[float, typer.Option(
        help="A camera that cannot be opened, reconnects or stalls is health `warn` at once and `alarm` after "
        "this many seconds.")] = 5.0,
    journal: Annotated[OptFile, typer.Option(
        help="Keep the verdicts published in this folder (bounded), for bridges and subscribers that missed "
        "some (docs/bridges.md).")] = None,
    journal_max_mb: Annotated[float, typer.Option(help="Disk the journal may use; the oldest verdicts go first.")
    ] = 256.0,
    replay: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="ZeroMQ endpoint answering replay requests from the journal [--publish's host, port + 1].")] = None,
    drift_every: Annotated[int, typer.Option(help="Input-drift metrics on every n-th frame per camera (1: all); "
        "camera-fault checks stay on every frame.")] = 1,
    model_watch: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Folder to watch: an exported model folder copied into it is checked and swapped in between two "
        "frames, without stopping (docs/model-updates.md). SIGHUP reloads --model's folder.")] = None,
    control: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="ZeroMQ endpoint of the control socket (JSON requests: trigger, ...), e.g. tcp://127.0.0.1:5560 "
        "(docs/triggers.md). Keep it on loopback: it has no authentication.")] = None,
    trigger: Annotated[bool, typer.Option("--trigger/--free-running", help="Triggered inspection: score only "
        "the first frame after each trigger on --control and answer with the part's verdict (default: score "
        "every frame).")] = False,
    trigger_deadline_ms: Annotated[int, typer.Option(
        help="Deadline of a trigger that names none: an answer later than this is `error: deadline`.")] = 500,
    log_level: LogLevel = "info",
) -> None:
    """Score camera frames and publish pass/fail verdicts + heatmaps over ZeroMQ."""
    setup_logging(log_level)
    from edge_somad.runtime.health.health import HealthConfig
    from edge_somad.runtime.messaging.curve import load_server
    from edge_somad.runtime.pipeline.launch import run_pipeline
    from edge_somad.runtime.pipeline.pipeline import PipelineConfig

    health_config = HealthConfig(
        enabled=health, frozen_s=frozen_s, frozen_frames=frozen_frames, input_warn_z=input_warn_z,
        input_alarm_z=input_alarm_z, fail_rate_warn=fail_rate_warn, fail_rate_alarm=fail_rate_alarm,
        score_window=score_window, score_min_samples=min(50, score_window), unavailable_alarm_s=camera_alarm,
        drift_every=drift_every)
    config = PipelineConfig(heatmap=heatmap, overlay=overlay, heatmap_passes=heatmap_passes,
                            max_frames=max_frames, queue_size=queue_size,
                            precision=precision, drain_timeout_s=drain_timeout, health=health_config,
                            max_batch=max_batch, batch_wait_ms=batch_wait_ms, camera_timeout_s=camera_timeout,
                            stall_min_s=stall_s, triggered=trigger, trigger_deadline_ms=trigger_deadline_ms)
    curve = load_server(curve_secret_key, curve_clients)
    journal_config = None
    if journal is not None:
        from edge_somad.runtime.messaging.journal import JournalConfig
        from edge_somad.runtime.messaging.replay import replay_endpoint_for

        journal_config = JournalConfig(journal, int(journal_max_mb * 2**20))
        replay = replay or replay_endpoint_for(publish)
    elif replay is not None:
        from edge_somad.errors import ConfigError

        raise ConfigError("--replay needs --journal DIR: the replay endpoint answers from the journal")
    final = run_pipeline(model, camera, backend=backend, publish=publish, topic_prefix=topic_prefix,
                         config=config, wait_subscribers=wait_subscribers, curve=curve, send_queue=send_queue,
                         journal=journal_config, replay=replay, control=control,
                         model_watch=model_watch)
    typer.echo(f"stopped ({final['reason']}): {final['verdicts']}, messages sent per topic {final['sent']}",
               err=True)
    if final.get("camera_timeout"):
        typer.echo(f"error: {final['reason']}", err=True)
        raise typer.Exit(EXIT_NOT_MET)


@handle_errors
def subscribe(
    connect: Annotated[str, typer.Option(help="Publisher endpoint, e.g. tcp://line-pc:5556")] = defaults.ENDPOINT,
    topic: Annotated[str, typer.Option(help="Topic prefix filter, e.g. somad/ or somad/cam0")] = "somad/",
    csv: Annotated[Optional[Path], typer.Option(help="Append one CSV row per verdict.")] = None,  # noqa: UP045
    save_fails: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Save header/overlay/heatmap of fail and error verdicts here.")] = None,
    count: Annotated[Optional[int], typer.Option(help="Exit after N verdicts.")] = None,  # noqa: UP045
    timeout: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="Exit after S seconds without any message (verdict, heartbeat or status).")] = None,
    curve_server_key: CurveServerKey = None,
    curve_secret_key: CurveClientSecret = None,
    max_message_mb: MaxMessageMb = 16.0,
    save_fails_max_mb: Annotated[float, typer.Option(
        help="Stop saving into --save-fails after this many MB written (counted, logged).")] = 4096.0,
    log_level: Annotated[str, typer.Option(help="info prints heartbeats to stderr")] = "warning",
) -> None:
    """Reference PLC/MES bridge: one JSON line per verdict on stdout."""
    setup_logging(log_level)
    from edge_somad.runtime.messaging.curve import load_client
    from edge_somad.runtime.messaging.intake import DecodeLimits
    from edge_somad.runtime.messaging.subscriber import subscribe_loop

    limits = DecodeLimits.with_max_message_mb(max_message_mb)
    curve = load_client(curve_server_key, curve_secret_key)
    res = subscribe_loop(connect, topic, csv, save_fails, count, timeout, curve=curve, limits=limits,
                         save_max_mb=save_fails_max_mb)
    not_saved = f", {res.not_saved} not saved (--save-fails-max-mb)" if res.not_saved else ""
    typer.echo(f"{res.verdicts} verdicts, {res.missed} missed (seq gaps), {res.rejected} rejected{not_saved}",
               err=True)
    if count is not None and res.verdicts < count:
        hint = " (with CURVE: check the keys; the publisher logs handshake failures)" if curve else ""
        typer.echo(f"error: received {res.verdicts} of {count} verdicts before the {timeout}s timeout{hint}",
                   err=True)
        raise typer.Exit(EXIT_NOT_MET)


@handle_errors
def view(
    connect: Annotated[list[str], typer.Option(
        "--connect", help="A `run` endpoint to watch, repeatable, e.g. tcp://line-pc:5556.")] = [defaults.ENDPOINT],  # noqa: B006
    host: Annotated[str, typer.Option(help="Address the page is served on; 0.0.0.0 shows it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the page.")] = 8080,
    topic: Annotated[str, typer.Option(help="Topic prefix filter, as for subscribe.")] = "somad/",
    fails: Annotated[int, typer.Option(help="Last N fails shown as thumbnails per camera.")] = 8,
    strip: Annotated[int, typer.Option(help="Last N results (pass/fail/error) as a colour strip per camera.")] = 30,
    curve_server_key: CurveServerKey = None,
    curve_secret_key: CurveClientSecret = None,
    max_message_mb: MaxMessageMb = 16.0,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "warning",
) -> None:
    """Live web page: per camera the latest overlay, verdict counts, fail rate, latency, health, last fails."""
    setup_logging(log_level)
    from edge_somad.runtime.messaging.curve import load_client
    from edge_somad.runtime.messaging.intake import DecodeLimits
    from edge_somad.runtime.view.view import ViewConfig, serve

    config = ViewConfig(endpoints=tuple(connect), topic=topic, host=host, port=port, n_fails=fails, strip_n=strip,
                        limits=DecodeLimits.with_max_message_mb(max_message_mb))
    serve(config, load_client(curve_server_key, curve_secret_key))


@handle_errors
def keys(
    name: Annotated[str, typer.Option(help="Key pair name, e.g. line-pc or plc1 (a camera-id-like word).")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.key (public) and NAME.key_secret (mode 600).")] = Path(
        "keys"),
) -> None:
    """Make a CURVE key pair (standard ZeroMQ certificate files) for `run` or `subscribe`."""
    from edge_somad.runtime.messaging.curve import make_keys

    public, secret = make_keys(out, name)
    typer.echo(f"public key: {public}  (give this one away: the publisher's to subscribers as "
               f"--curve-server-key, a subscriber's into the publisher's --curve-clients folder)")
    typer.echo(f"secret key: {secret}  (stays on this machine: --curve-secret-key)")


def main() -> None:
    app = typer.Typer(add_completion=False, help="edge-somad runtime commands")
    for name, command in (("run", run), ("subscribe", subscribe), ("keys", keys), ("view", view)):
        app.command(name)(command)
    app()


if __name__ == "__main__":
    main()
