"""One MQTT connection (paho-mqtt 2), used once and thrown away.

A fresh paho client per connection attempt, on purpose: paho keeps unacknowledged QoS 1 messages
in memory and resends them by itself on reconnect, which would duplicate what the bridge resends
from its disk queue and hide the one place that decides what is still owed. Here the disk queue
is that place: when a connection is lost, this object is closed and its in-memory state dropped.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError

log = logging.getLogger(__name__)

# CONNACK refusals that a broker gives while it is starting or overloaded: retried. Any other refusal
# (bad user name or password, not authorised, invalid will topic, client id rejected, ...) is a
# configuration the broker will refuse again however often the bridge asks.
TRANSIENT_REFUSALS = frozenset({0x88, 0x89, 0x97, 0x9F})  # unavailable, busy, quota, connection rate


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    version: str = "5"  # "5" | "3.1.1"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None  # None with tls: the system's trusted CAs
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    keepalive_s: int = 10  # the broker publishes the death message within 1.5x this after a silent loss
    window: int = 200  # QoS 1 messages in flight (unacknowledged) at once


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True  # Sparkplug's NDEATH will is not retained


INBOX_MAX = 1000  # received messages waiting for the sender thread; beyond that the newest are dropped, counted


class MqttLink:
    """connect() -> publish()/acked -> close(). `lost` is set when the connection ends or was refused."""

    def __init__(self, config: BrokerConfig, will: Will,
                 commands: tuple[str, Callable[[MqttLink, Any], None]] | None = None) -> None:
        """commands: (topic, handler): subscribed on every connect; handler(link, message) runs on paho's
        thread (the trigger command topic, mqtt_trigger.py)."""
        import paho.mqtt.client as mqtt

        self.config = config
        protocol = mqtt.MQTTv5 if config.version == "5" else mqtt.MQTTv311
        kwargs = {} if config.version == "5" else {"clean_session": True}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=protocol,
                                  **kwargs)
        self.client.max_inflight_messages_set(config.window)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(3600, 3600)  # never paho's own reconnect: see the module docstring
        self.client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        if config.tls:
            try:
                self.client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                                    certfile=str(config.cert_file) if config.cert_file else None,
                                    keyfile=str(config.key_file) if config.key_file else None,
                                    cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: unreadable or mismatched PEM files
                raise ConfigError(f"TLS set-up failed ({exc}); check --ca-file, --cert-file and --key-file "
                                  "(PEM files; the key must match the certificate)") from exc
        self.connected, self.lost = threading.Event(), threading.Event()
        self.error: str | None = None
        self.refused = False  # the broker answered with a refusal that retrying will not change
        self.acked: collections.deque[int] = collections.deque()  # mids, appended by paho's thread
        # Messages of the topics subscribe() asked for: (topic, payload), appended by paho's thread.
        self.inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self.inbox_dropped = 0
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self._commands = commands
        if commands is not None:  # the plain bridge's trigger command topic: its handler takes the message
            self.client.on_message = lambda client, userdata, msg: commands[1](self, msg)
        else:  # subscribe()'s topics (Sparkplug commands, STATE): to the inbox, for the sender thread
            self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.error = f"the broker refused the connection: {reason_code}"
            self.refused = reason_code.value not in TRANSIENT_REFUSALS
            self.lost.set()
        else:
            if self._commands is not None:
                client.subscribe(self._commands[0], qos=1)
            self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.error is None:
            self.error = f"connection lost ({reason_code})"
        self.lost.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Runs on paho's thread with paho's locks held: only a deque append (thread-safe), no I/O.
        if not reason_code.is_failure:
            self.acked.append(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if all(not rc.is_failure for rc in reason_codes):
            self.subscribed.set()
        else:
            self.error = f"the broker refused a subscription: {[str(rc) for rc in reason_codes]}"

    def _on_message(self, client, userdata, msg) -> None:
        # paho's thread: a flood of commands must not grow memory without bound, nor block paho.
        if len(self.inbox) >= INBOX_MAX:
            self.inbox_dropped += 1
        else:
            self.inbox.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topics: list[tuple[str, int]], timeout_s: float = 5.0) -> bool:
        """Subscribe to (topic, qos) pairs; True once the broker granted them all (SUBACK)."""
        if not self.up:
            return False
        self.subscribed.clear()
        rc, _ = self.client.subscribe(topics)
        return rc == 0 and self.subscribed.wait(timeout_s)

    def connect(self, timeout_s: float) -> bool:
        """True once the broker accepted us; otherwise False with `error` saying why."""
        try:
            self.client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        self.client.loop_start()
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.05) + 1):
            if self.connected.is_set() or self.lost.is_set():
                break
            deadline.wait(0.05)
        if not self.connected.is_set():
            self.error = self.error or f"no CONNACK within {timeout_s:g} s"
            self.close()
            return False
        return True

    @property
    def up(self) -> bool:
        return self.connected.is_set() and not self.lost.is_set()

    def publish(self, topic: str, payload: bytes, retain: bool = False, correlation: bytes | None = None,
                qos: int = 1) -> int | None:
        """The message id to watch in `acked` (QoS 1), or None when the connection is gone. correlation: MQTT 5
        Correlation Data of an answer to a request."""
        import paho.mqtt.client as mqtt

        if not self.up:
            return None
        props = None
        if correlation is not None and self.config.version == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def wait_acked(self, mid: int | None, timeout_s: float) -> bool:
        """Wait until the broker acknowledged QoS-1 message `mid` (a last message before DISCONNECT)."""
        t_end = time.monotonic() + timeout_s
        while mid is not None and mid not in self.acked and time.monotonic() < t_end:
            time.sleep(0.01)
        return mid is not None and mid in self.acked

    def close(self) -> None:
        """Send DISCONNECT if still connected (no last will then), stop paho's thread, drop its state."""
        try:
            self.client.disconnect()  # also what stops paho's loop from reconnecting on its own
        except (OSError, ValueError) as exc:  # a dead socket: nothing left to close politely
            log.debug("disconnect: %s", exc)
        self.client.loop_stop()
