"""`edge-somad bridge mqtt|opcua`: typer commands (a sub-app the main CLI mounts as `bridge`).

paho-mqtt, asyncua and zmq are imported inside the bodies so `edge-somad --help` needs none.
`python -m edge_somad.cli.bridge mqtt|opcua ...` runs them without the main CLI.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
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
from edge_somad.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Factory integration: verdicts from `run` to an MQTT broker or an OPC UA server.")
Connect = Annotated[list[str], typer.Option(
    "--connect", help="`run` endpoint to subscribe to, repeatable (one per box or line PC).")]
TopicFilter = Annotated[str, typer.Option(help="ZeroMQ topic prefix filter.")]
PASSWORD_ENV = "EDGE_SOMAD_BRIDGE_PASSWORD"
log = logging.getLogger(__name__)


def default_box() -> str:
    """The host name made topic-safe (camera-id rule): dots and other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-_") or "box"
    return name


def _password(password_file: Path | None) -> str | None:
    """From a file (first line) or $EDGE_SOMAD_BRIDGE_PASSWORD: never on the command line (ps shows it)."""
    if password_file is not None:
        try:
            return password_file.read_text().splitlines()[0] if password_file.stat().st_size else ""
        except OSError as exc:
            raise ConfigError(f"--password-file {password_file} cannot be read ({exc.strerror})") from exc
    return os.environ.get(PASSWORD_ENV)


def _check_name(value: str, option: str) -> str:
    from edge_somad.errors import InputError
    from edge_somad.runtime.messaging.messages import check_camera_id

    try:
        return check_camera_id(value)
    except InputError as exc:
        raise ConfigError(f"{option}: {exc} (it becomes an MQTT topic level / OPC UA browse name)") from exc


def _on_signals(stop) -> dict:
    """SIGTERM/SIGINT call stop(); returns the previous handlers, to put back (the caller may be a test runner)."""
    return {sig: signal.signal(sig, lambda *_: stop()) for sig in (signal.SIGTERM, signal.SIGINT)}


@app.command("mqtt")
@handle_errors
def mqtt(
    connect: Connect = [defaults.ENDPOINT],  # noqa: B006 - typer copies list defaults
    broker: Annotated[str, typer.Option(help="MQTT broker host name or address.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Broker port [1883, 8883 with --tls].")] = None,  # noqa: UP045
    mqtt_version: Annotated[str, typer.Option(help="5 | 3.1.1")] = "5",
    box: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--box", "--node", help="Edge node id in the topics [host name]: one per box.")] = None,
    group: Annotated[str, typer.Option(help="Group id in the topics (line, hall, site).")] = "line",
    topic_root: Annotated[str, typer.Option(help="First topic levels.")] = "edge-somad/v1",
    username: Annotated[Optional[str], typer.Option(help="Broker user name.")] = None,  # noqa: UP045
    password_file: Annotated[OptFile, typer.Option(
        help=f"File whose first line is the broker password (or set ${PASSWORD_ENV}).")] = None,
    tls: Annotated[bool, typer.Option("--tls/--no-tls", help="TLS to the broker (certificate checked).")] = False,
    ca_file: Annotated[OptFile, typer.Option(help="CA certificate(s) for --tls [the system's].")] = None,
    cert_file: Annotated[OptFile, typer.Option(help="Client certificate for mutual TLS.")] = None,
    key_file: Annotated[OptFile, typer.Option(help="Client certificate's private key.")] = None,
    queue_file: Annotated[OptFile, typer.Option(
        help="SQLite store-and-forward queue [~/.local/state/edge-somad/mqtt-BOX.sqlite].")] = None,
    queue_max: Annotated[int, typer.Option(
        help="Messages (verdicts, heatmaps) kept while the broker is away; beyond: heatmaps, then passes dropped "
        "first, counted.")] = 100_000,
    heatmaps: Annotated[bool, typer.Option("--heatmaps/--no-heatmaps", help="Publish PNG heatmaps too.")] = False,
    heatmap_max_bytes: Annotated[int, typer.Option(help="Larger heatmaps are not published (counted).")] = 262_144,
    status_interval: Annotated[float, typer.Option(help="Seconds between retained status messages.")] = 10.0,
    replay: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--replay", help="`run --replay` endpoint of each --connect, same order (run with --journal): verdicts "
        "missed while this bridge was away are asked for there; without it they are only counted.")] = None,
    sparkplug: Annotated[bool, typer.Option(
        "--sparkplug/--no-sparkplug", help="Speak Sparkplug B 3.0 (spBv1.0 topics, protobuf, each camera a "
        "device) instead of edge-somad's JSON topics; docs/sparkplug.md.")] = False,
    primary_host: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="--sparkplug: the primary host application's id; births wait for its STATE to say online.")] = None,
    control: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="`run --control` endpoint: answer trigger commands on <root>/<group>/CMD/<box>/trigger "
        "(docs/triggers.md); with --sparkplug, a DCMD `Trigger` on a camera device.")] = None,
    topic: TopicFilter = "somad/",
    curve_server_key: CurveServerKey = None,
    curve_secret_key: CurveClientSecret = None,
    max_message_mb: MaxMessageMb = 16.0,
    log_level: LogLevel = "info",
) -> None:
    """Publish verdicts to an MQTT broker (birth/death, per-camera seq, QoS 1, disk queue while it is away)."""
    setup_logging(log_level)
    from edge_somad.runtime.messaging.curve import load_client

    if mqtt_version not in ("5", "3.1.1"):
        raise ConfigError(f"--mqtt-version {mqtt_version!r}; expected 5 or 3.1.1")
    box = _check_name(box or default_box(), "--box")
    _check_name(group, "--group")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port {port}; expected 1..65535")
    for option, path in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{option} {path} does not exist")
    if (ca_file or cert_file or key_file) and not tls:
        raise ConfigError("--ca-file/--cert-file/--key-file need --tls")
    if not sparkplug and primary_host is not None:
        raise ConfigError("--primary-host is a Sparkplug option; add --sparkplug")
    if sparkplug and heatmaps:
        raise ConfigError("--heatmaps is not available with --sparkplug (a verdict's metrics carry no picture); "
                          "run a plain bridge beside it for heatmaps")
    if username is not None and not tls and broker not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--username without --tls: the password crosses the network in clear text")
    from edge_somad.runtime.bridges.mqtt import MqttBridge, MqttBridgeConfig, check_topic_root
    from edge_somad.runtime.bridges.mqtt_link import BrokerConfig
    from edge_somad.runtime.bridges.source import SourceConfig
    from edge_somad.runtime.messaging.intake import DecodeLimits

    root = check_topic_root(topic_root.strip("/"))
    limits = DecodeLimits.with_max_message_mb(max_message_mb)

    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-somad"
    config = MqttBridgeConfig(
        broker=BrokerConfig(host=broker, port=port or (8883 if tls else 1883), version=mqtt_version,
                            client_id=f"edge-somad-{group}-{box}", username=username,
                            password=_password(password_file), tls=tls, ca_file=ca_file, cert_file=cert_file,
                            key_file=key_file),
        source=SourceConfig(tuple(connect), topic, load_client(curve_server_key, curve_secret_key), limits),
        box=box, group=group, root=root,
        queue_file=queue_file or state / f"{'sparkplug' if sparkplug else 'mqtt'}-{box}.sqlite", queue_max=queue_max,
        heatmaps=heatmaps, heatmap_max_bytes=heatmap_max_bytes, status_interval_s=status_interval,
        replay=tuple(replay or ()), control=control)
    if sparkplug:
        from edge_somad.runtime.bridges.sparkplug import SparkplugBridge, SparkplugOptions
        from edge_somad.runtime.bridges.sparkplug_commands import check_host_id

        host = None if primary_host is None else check_host_id(primary_host)
        bridge: MqttBridge = SparkplugBridge(config, SparkplugOptions(primary_host=host))
    else:
        bridge = MqttBridge(config)
    previous = _on_signals(bridge.request_stop)
    try:
        counters = bridge.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(f"stopped: {counters.stored} verdicts stored, {counters.delivered} delivered this run, "
               f"{counters.left} left in {config.queue_file} for the next start; "
               f"overflow {counters.overflow or 'none'}", err=True)


@app.command("opcua")
@handle_errors
def opcua(
    connect: Connect = [defaults.ENDPOINT],  # noqa: B006 - typer copies list defaults
    endpoint: Annotated[str, typer.Option(
        help="OPC UA endpoint to serve; loopback by default, opc.tcp://0.0.0.0:4840/edge-somad/ serves the network."
    )] = "opc.tcp://127.0.0.1:4840/edge-somad/",
    box: Annotated[Optional[str], typer.Option(help="Name of this box in the address space [host name].")] = None,  # noqa: UP045
    username: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Require this user name (with the password from --password-file or $EDGE_SOMAD_BRIDGE_PASSWORD).")
    ] = None,
    password_file: Annotated[OptFile, typer.Option(help="File whose first line is the password.")] = None,
    certificate: Annotated[OptFile, typer.Option(
        help="Server certificate (DER or PEM): with --private-key, serve Basic256Sha256 Sign&Encrypt only.")] = None,
    private_key: Annotated[OptFile, typer.Option(help="The server certificate's private key (PEM).")] = None,
    allow_plaintext_password: Annotated[bool, typer.Option(
        help="Accept --username without --certificate: the password then crosses the network readable "
        "(SecurityPolicy None); for a loopback or an isolated cell network only.")] = False,
    camera: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--camera", help="Camera id to show before its first verdict (repeatable), so PLC programs bind at start."
    )] = None,
    control: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="`run --control` endpoint: adds the method Trigger(PartId, DeadlineMs) that returns the part's "
        "verdict (docs/triggers.md).")] = None,
    trigger_camera: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Camera the Trigger method inspects when `run` has several.")] = None,
    stale_after: Annotated[float, typer.Option(
        help="Seconds without any message from `run` after which SystemState/CameraStatus say offline and "
        "values turn Uncertain (heartbeats come every second).")] = 3.0,
    topic: TopicFilter = "somad/",
    curve_server_key: CurveServerKey = None,
    curve_secret_key: CurveClientSecret = None,
    max_message_mb: MaxMessageMb = 16.0,
    log_level: LogLevel = "info",
) -> None:
    """Serve the last result, counters and health of each camera over OPC UA (names after OPC 40100)."""
    setup_logging(log_level)
    from edge_somad.runtime.messaging.curve import load_client

    box = _check_name(box or default_box(), "--box")
    if (certificate is None) != (private_key is None):
        raise ConfigError("--certificate and --private-key go together (Basic256Sha256 needs both)")
    for option, path in (("--certificate", certificate), ("--private-key", private_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{option} {path} does not exist")
    cameras = tuple(_check_name(c, "--camera") for c in camera or ())
    password = _password(password_file)
    if username is not None and not password:
        raise ConfigError(f"--username needs a password: --password-file FILE or ${PASSWORD_ENV}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and (username is None or certificate is None):
        log.warning("serving OPC UA on %s with %s: use --username and --certificate/--private-key on a network "
                    "others can reach", endpoint, "anonymous access" if username is None else "no encryption")
    from edge_somad.runtime.bridges.opcua import OpcuaConfig, serve
    from edge_somad.runtime.bridges.source import SourceConfig
    from edge_somad.runtime.messaging.intake import DecodeLimits

    limits = DecodeLimits.with_max_message_mb(max_message_mb)
    config = OpcuaConfig(source=SourceConfig(tuple(connect), topic, load_client(curve_server_key,
                                                                                 curve_secret_key), limits),
                         endpoint=endpoint, box=box, username=username, password=password,
                         certificate=certificate, private_key=private_key, cameras=cameras,
                         stale_after_s=stale_after, allow_plaintext_password=allow_plaintext_password,
                         control=control,
                         trigger_camera=None if trigger_camera is None else _check_name(trigger_camera,
                                                                                        "--trigger-camera"))
    serve(config)


if __name__ == "__main__":
    app()
