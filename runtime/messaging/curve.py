"""CURVE (ZeroMQ's authenticated encryption) for the verdict stream: key files, server, clients.

Key files are standard ZeroMQ certificates (`zmq.auth.create_certificates`): `NAME.key` holds the
public key, `NAME.key_secret` the public and the secret key, so CZMQ, JeroMQ, NetMQ and libzmq
tools read them too. The publisher is the CURVE server: it holds its own secret key and accepts
only clients whose public key file lies in `--curve-clients DIR` (checked by a ZAP handler thread
on the publisher's own context). A client needs its own key pair and the server's public key,
which also proves to the client that it talks to the real publisher.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError, InputError

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


@dataclass(frozen=True)
class CurveServer:
    """The publisher's key pair and the folder of client public keys it accepts (Z85 bytes)."""

    public_key: bytes
    secret_key: bytes
    clients_dir: Path
    client_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class CurveClient:
    """A subscriber's key pair and the public key of the publisher it expects (Z85 bytes)."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes


def _require_curve() -> None:
    import zmq

    if not zmq.has("curve"):
        raise ConfigError(
            f"CURVE requested, but this libzmq ({zmq.zmq_version()}) was built without it. "
            "Install a pyzmq wheel from PyPI (it bundles libzmq with CURVE)."
        )


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate file, with errors that say which option was wrong."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; make one with `edge-somad keys --name NAME --out DIR`")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is not a ZeroMQ certificate ({exc}); expected a file "
                          "written by `edge-somad keys` (or zmq.auth.create_certificates)") from exc
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise ConfigError(f"{what} {path}: keys must be 40 Z85 characters; the file is damaged")
    return public, secret


def _load_secret(path: Path, what: str) -> tuple[bytes, bytes]:
    public, secret = _load(path, what)
    if secret is None:
        raise ConfigError(f"{what} {path} holds only a public key; expected the secret file "
                          f"NAME{SECRET_SUFFIX} written by `edge-somad keys`")
    if os.name == "posix" and Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by other users; run `chmod 600 %s`", what, path, path)
    return public, secret


def make_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write OUT/NAME.key (public) and OUT/NAME.key_secret (mode 600); never overwrites."""
    _require_curve()
    import zmq.auth

    from edge_somad.runtime.messaging.messages import check_camera_id

    try:
        check_camera_id(name)  # the same safe-file-name rule as camera ids
    except InputError as exc:
        raise ConfigError(f"key name: {exc}") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = out_dir / f"{name}{PUBLIC_SUFFIX}", out_dir / f"{name}{SECRET_SUFFIX}"
    for p in (public, secret):
        if p.exists():
            raise ConfigError(f"{p} already exists; keys are never overwritten. Pick another --name or remove it.")
    old = os.umask(0o077)  # the secret file must never exist world-readable, not even for a moment
    try:
        zmq.auth.create_certificates(out_dir, name)
    finally:
        os.umask(old)
    public.chmod(0o644)
    return public, secret


def load_server(secret_key: Path | None, clients_dir: Path | None) -> CurveServer | None:
    """`run --curve-secret-key FILE --curve-clients DIR` -> CurveServer; None when neither is given."""
    if secret_key is None and clients_dir is None:
        return None
    if secret_key is None or clients_dir is None:
        raise ConfigError(
            "CURVE needs both --curve-secret-key (the publisher's NAME.key_secret) and --curve-clients "
            "(a folder of allowed subscribers' NAME.key files); got only one. Without the list any key "
            "would be accepted, which authenticates nobody."
        )
    _require_curve()
    public, secret = _load_secret(Path(secret_key), "--curve-secret-key")
    clients_dir = Path(clients_dir)
    if not clients_dir.is_dir():
        raise ConfigError(f"--curve-clients {clients_dir} is not a folder; expected a folder of NAME.key files")
    keys = tuple(_load(p, "client key")[0] for p in sorted(clients_dir.glob(f"*{PUBLIC_SUFFIX}")))
    if not keys:
        raise ConfigError(f"--curve-clients {clients_dir} holds no *{PUBLIC_SUFFIX} file; copy each allowed "
                          "subscriber's public NAME.key there (never its .key_secret)")
    if any(clients_dir.glob(f"*{SECRET_SUFFIX}")):
        log.warning("%s holds secret keys (*%s): only public keys belong there", clients_dir, SECRET_SUFFIX)
    return CurveServer(public, secret, clients_dir, keys)


def load_client(server_key: Path | None, secret_key: Path | None) -> CurveClient | None:
    """`--curve-server-key FILE --curve-secret-key FILE` -> CurveClient; None when neither is given."""
    if server_key is None and secret_key is None:
        return None
    if server_key is None or secret_key is None:
        raise ConfigError(
            "a CURVE subscriber needs both --curve-server-key (the publisher's NAME.key) and "
            "--curve-secret-key (this subscriber's own NAME.key_secret); got only one"
        )
    _require_curve()
    server_public, _ = _load(Path(server_key), "--curve-server-key")
    public, secret = _load_secret(Path(secret_key), "--curve-secret-key")
    return CurveClient(public, secret, server_public)


def start_authenticator(ctx: Any, server: CurveServer) -> Any:
    """A ZAP handler on ctx that admits exactly server.client_keys; returns it (call .stop())."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(server.clients_dir))
    # configure_curve only logs a folder it cannot read; refuse to run with a list other than ours.
    loaded = set(auth.certs.get("*", {}))
    if loaded != set(server.client_keys):
        auth.stop()
        raise ConfigError(f"the ZAP handler loaded {len(loaded)} client key(s) from {server.clients_dir}, "
                          f"expected {len(server.client_keys)}; check the folder's permissions")
    return auth


def apply_server(sock: Any, server: CurveServer) -> None:
    sock.curve_secretkey = server.secret_key
    sock.curve_publickey = server.public_key
    sock.curve_server = True


def apply_client(sock: Any, client: CurveClient) -> None:
    sock.curve_secretkey = client.secret_key
    sock.curve_publickey = client.public_key
    sock.curve_serverkey = client.server_key


def connect_subscriber(endpoint: str, topic: bytes, curve: CurveClient | None = None, rcvhwm: int = 1000,
                       max_part_bytes: int | None = None) -> Any:
    """The one way the project's consumers open a SUB socket (subscriber, view, bridges, benchmark, tests).

    ZMQ_MAXMSGSIZE (`max_part_bytes`, default intake.DEFAULT_LIMITS): libzmq disconnects a peer that
    sends a larger frame before it is held in memory. ConfigError for an endpoint ZeroMQ cannot use.
    """
    import zmq

    from edge_somad.runtime.messaging.intake import DEFAULT_LIMITS

    sock = zmq.Context.instance().socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes or DEFAULT_LIMITS.max_part_bytes)
        if curve is not None:
            apply_client(sock, curve)
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigError(f"--connect {endpoint[:200]!r}: {exc}; expected a ZeroMQ endpoint such as "
                          "tcp://line-pc:5556 (what `run --publish` binds)") from None
    return sock
