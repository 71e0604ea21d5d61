"""The collector's configuration: typed, validated, documented in collector/sample.toml.

One frozen dataclass per TOML table. The loader walks the dataclass fields, so a key is valid exactly
when a field exists: an unknown key is an error that names it and suggests the closest valid one.
Durations ("500ms", "5s", "2m", "7d") and sizes ("64KiB", "512MiB") are read as units.

Precedence: built-in defaults < the TOML file < environment (secrets only, `ENV`) < command-line flags
(`FLAGS`). Both tables map onto dotted config keys and go through the same parser as the file, so a
flag cannot bypass validation and nothing is copied by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECOND = 1.0
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


_DURATION_UNITS = {"ms": 0.001, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: object, key: str = "") -> float:
    """Seconds from "250ms", "5s", "2m", "1h", "7d" or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like '5s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*", value)
        if not m:
            raise ConfigError(
                f"{key}: expected a duration like '500ms', '5s', '2m', '1h', '7d', got {value!r}"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ConfigError(f"{key}: expected a duration like '5s', got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: a duration cannot be negative ({value!r})")
    return seconds


def parse_size(value: object, key: str = "") -> int:
    """Bytes from "512MiB", "64KiB", "1GB" or a plain integer."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like '512MiB', got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{key}: expected a size like '64KiB', '512MiB', '1GB', got {value!r}")
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ConfigError(f"{key}: expected a size like '512MiB', got {value!r}")
    if n < 0:
        raise ConfigError(f"{key}: a size cannot be negative ({value!r})")
    return n


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"unit": "duration"})


def _size(default: str) -> Any:
    return field(default=parse_size(default), metadata={"unit": "size"})


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "citybrain-collector"  # fixed: the broker keeps this session across restarts
    username: str = ""
    password: str = ""  # prefer CITYBRAIN_MQTT_PASSWORD
    topic_prefix: str = "city"
    share_group: str = ""  # non-empty: `$share/<group>/...` so several collectors split the load
    keepalive: float = _duration("30s")
    session_expiry: float = _duration("7d")  # how long the broker queues for us while we are down
    receive_maximum: int = 1000  # cap on unacknowledged messages (and on messages being processed)
    reconnect_min: float = _duration("1s")
    reconnect_max: float = _duration("30s")
    tls: bool = False
    ca_file: str = ""


@dataclass(frozen=True)
class InfluxConfig:
    version: int = 1  # 1: /write (db, rp, user, password); 2: /api/v2/write (org, bucket, token)
    url: str = "http://127.0.0.1:8086"
    db: str = "citybrain"
    rp: str = ""
    user: str = ""
    password: str = ""  # prefer CITYBRAIN_INFLUX_PASSWORD
    org: str = ""
    bucket: str = ""
    token: str = ""  # prefer CITYBRAIN_INFLUX_TOKEN
    # 1.x only: on "database not found", run CREATE DATABASE (needs admin rights) and resend.
    # false: the data is held (spooled) until an operator creates the database.
    create_database: bool = False


@dataclass(frozen=True)
class StorageConfig:
    spool_path: str = "/var/lib/citybrain-collector/spool.sqlite"
    spool_max_bytes: int = _size("512MiB")
    dead_letter_path: str = "/var/lib/citybrain-collector/dead_letters.sqlite"
    dead_letter_max_bytes: int = _size("64MiB")  # past this the oldest entries are deleted, counted
    dead_letter_max_age: float = _duration("30d")  # older entries are deleted, counted
    dead_letter_payload_max: int = _size("64KiB")  # larger payloads keep only this prefix + sha256


@dataclass(frozen=True)
class WriterConfig:
    batch_size: int = 5000  # points per database write
    flush_interval: float = _duration("1s")  # longest a point waits for its batch to fill
    timeout: float = _duration("10s")  # one database write
    # How often a database that refuses the collector itself (missing database, credentials) is
    # tried again; the data waits in the spool meanwhile.
    hold_retry: float = _duration("30s")
    # A submit that waited this long for room (database healthy but slower than the traffic) is
    # spooled, and so is what follows until the database keeps up: a burst waits, a backlog spools.
    backlog_timeout: float = _duration("10s")


@dataclass(frozen=True)
class DecodeConfig:
    max_payload: int = _size("64KiB")  # larger messages are dead-lettered undecoded
    max_future: float = _duration("5m")  # timestamps further ahead than now + this are refused
    min_time: str = "2020-01-01T00:00:00Z"  # timestamps before this are refused
    max_id_len: int = 64  # characters in a sensor id, gateway id or tag value
    max_string_len: int = 256  # characters in a string field value
    # Cardinality bounds per gateway, counted since the collector started (docs/collector.md,
    # "Bounds"): new series past them are dead-lettered, so one gateway cannot exhaust the
    # database's series limit for everyone.
    max_sensors_per_gateway: int = 1024  # distinct sensor ids (readings, alarms, status errors)
    max_alarm_codes_per_gateway: int = 32  # distinct alarm codes (the `code` tag of `alarm`)
    max_error_codes_per_gateway: int = 32  # distinct error names in status `errors`
    # With a gateway registry (`[gateways.*]` or service.gateways_file), messages from ids not in it
    # are dead-lettered as unknown_gateway; true accepts them (tagged `gw` only). Without a registry
    # every id in the protocol's alphabet is accepted whatever this says.
    accept_unregistered: bool = False


@dataclass(frozen=True)
class DedupConfig:
    window: int = 256  # batch keys remembered per gateway (~180 B each; docs/scaling.md)
    max_gateways: int = 100_000  # gateways remembered; the least recently seen is forgotten first


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9108  # 0 disables the HTTP endpoint
    liveness_interval: float = _duration("15s")  # how often silent gateways are looked for
    default_heartbeat: float = _duration("2m")  # silence allowed before a gateway is reported


@dataclass(frozen=True)
class HealthConfig:
    """When /healthz says "degraded" (HTTP 200 with reasons; docs/collector.md, "Health")."""

    refusal_window: float = _duration("5m")  # degraded while the database refused a line this recently
    spool_window: float = _duration("1m")  # degraded while the spool grew over this window
    dead_letter_window: float = _duration("1m")  # dead letters counted over this window...
    dead_letter_spike: int = 100  # ...degraded when more than this many


@dataclass(frozen=True)
class ServiceConfig:
    drain_timeout: float = _duration("30s")  # at shutdown: longest wait for in-flight writes
    log_level: str = "INFO"
    # Refusals are logged once per (reason, gateway) episode; an episode ends after this much quiet,
    # and a long one gets a reminder line (with the count of suppressed repeats) this often.
    refusal_log_quiet: float = _duration("1m")
    # A TOML file of [gateways.<id>] tables (provisioning writes it); relative to the config file.
    gateways_file: str = ""


@dataclass(frozen=True)
class GatewayInfo:
    site: str = ""
    district: str = ""
    heartbeat: float = _duration("0s")  # 0: metrics.default_heartbeat


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    storage: StorageConfig = StorageConfig()
    writer: WriterConfig = WriterConfig()
    decode: DecodeConfig = DecodeConfig()
    dedup: DedupConfig = DedupConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    service: ServiceConfig = ServiceConfig()
    gateways: Mapping[str, GatewayInfo] = field(default_factory=dict)


_SECTIONS: dict[str, type] = {
    "mqtt": MqttConfig,
    "influx": InfluxConfig,
    "storage": StorageConfig,
    "writer": WriterConfig,
    "decode": DecodeConfig,
    "dedup": DedupConfig,
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "service": ServiceConfig,
}

# Secrets come from the environment so they stay out of the file and the process list.
ENV: dict[str, str] = {
    "CITYBRAIN_MQTT_USERNAME": "mqtt.username",
    "CITYBRAIN_MQTT_PASSWORD": "mqtt.password",
    "CITYBRAIN_INFLUX_USER": "influx.user",
    "CITYBRAIN_INFLUX_PASSWORD": "influx.password",
    "CITYBRAIN_INFLUX_TOKEN": "influx.token",
}

# Command-line flag -> config key. The CLI builds its options from this table and a test walks it.
FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--mqtt-host", "mqtt.host", "MQTT broker host"),
    ("--mqtt-port", "mqtt.port", "MQTT broker port"),
    ("--client-id", "mqtt.client_id", "fixed MQTT client id (the broker keeps its session)"),
    ("--topic-prefix", "mqtt.topic_prefix", "topic prefix, `<prefix>/<gw>/up`"),
    ("--share-group", "mqtt.share_group", "shared-subscription group (several collectors)"),
    ("--influx-url", "influx.url", "InfluxDB base URL"),
    ("--influx-db", "influx.db", "InfluxDB 1.x database"),
    ("--spool", "storage.spool_path", "SQLite spool file"),
    ("--dead-letters", "storage.dead_letter_path", "SQLite dead-letter file"),
    ("--metrics-port", "metrics.port", "metrics and /healthz port (0: off)"),
    ("--log-level", "service.log_level", "DEBUG, INFO, WARNING or ERROR"),
)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _convert(f: dataclasses.Field[Any], value: object, key: str) -> object:
    unit = f.metadata.get("unit")
    if unit == "duration":
        return parse_duration(value, key)
    if unit == "size":
        return parse_size(value, key)
    expected = {"str": str, "int": int, "bool": bool, "float": float}[str(f.type)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _coerce_text(f: dataclasses.Field[Any], text: str, key: str) -> object:
    """A flag or environment value arrives as text; give it the field's type."""
    if f.metadata.get("unit") or str(f.type) == "str":
        return text
    if str(f.type) == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    try:
        return int(text) if str(f.type) == "int" else float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected {f.type}, got {text!r}") from None


def _build(cls: type, table: object, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for key, value in table.items():
        full = f"{where}.{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {full!r}{_suggest(key, list(fields))}")
        values[key] = _convert(fields[key], value, full)
    return cls(**values)


# A gateway id, as docs/protocol.md defines it (provisioning/fleet.py allows a subset of it).
GATEWAY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _check(config: Config) -> None:
    m = config.mqtt
    if not 1 <= m.port <= 65535:
        raise ConfigError(f"mqtt.port: {m.port} is not a TCP port")
    if not 1 <= m.receive_maximum <= 65535:
        raise ConfigError("mqtt.receive_maximum: must be 1..65535 (MQTT 5 Receive Maximum)")
    if not m.client_id:
        raise ConfigError("mqtt.client_id: must be set (a fixed id keeps the broker session)")
    if any(c in m.topic_prefix for c in "+#"):
        raise ConfigError(f"mqtt.topic_prefix: {m.topic_prefix!r} must not contain wildcards")
    if any(c in m.share_group for c in "+#/"):
        raise ConfigError(f"mqtt.share_group: {m.share_group!r} must not contain wildcards or '/'")
    if not m.topic_prefix:
        raise ConfigError("mqtt.topic_prefix: must not be empty")
    if config.influx.version not in (1, 2):
        raise ConfigError(f"influx.version: must be 1 or 2, got {config.influx.version}")
    if config.influx.version == 2 and not (config.influx.org and config.influx.bucket):
        raise ConfigError("influx.org and influx.bucket: required with influx.version = 2")
    if config.writer.batch_size < 1:
        raise ConfigError("writer.batch_size: must be at least 1")
    if config.dedup.window < 1 or config.dedup.max_gateways < 1:
        raise ConfigError("dedup.window and dedup.max_gateways: must be at least 1")
    if config.health.dead_letter_spike < 0:
        raise ConfigError("health.dead_letter_spike: must be 0 or more")
    if config.storage.dead_letter_payload_max < 1:
        raise ConfigError("storage.dead_letter_payload_max: must be at least 1 byte")
    if config.storage.dead_letter_max_bytes < config.storage.dead_letter_payload_max:
        raise ConfigError(
            "storage.dead_letter_max_bytes: must hold at least one payload (dead_letter_payload_max)"
        )
    if config.influx.create_database and config.influx.version != 1:
        raise ConfigError("influx.create_database: InfluxDB 1.x only (create the bucket with the 2.x tools)")
    if not 0 <= config.metrics.port <= 65535:
        raise ConfigError(f"metrics.port: {config.metrics.port} is not a TCP port")
    if config.service.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"service.log_level: {config.service.log_level!r} is not a log level")
    min_time_ms(config.decode)
    for key in ("max_sensors_per_gateway", "max_alarm_codes_per_gateway", "max_error_codes_per_gateway"):
        if getattr(config.decode, key) < 1:
            raise ConfigError(f"decode.{key}: must be at least 1")
    for gw, info in config.gateways.items():
        if not GATEWAY_ID.fullmatch(gw):
            raise ConfigError(f"gateways.{gw}: a gateway id is 1-64 of A-Z a-z 0-9 _ . : -")
        for tag in (info.site, info.district):
            if tag and (
                len(tag) > config.decode.max_id_len or any(ord(c) < 32 or ord(c) == 127 for c in tag)
            ):
                raise ConfigError(f"gateways.{gw}: tag value {tag!r} is too long or has control characters")


def min_time_ms(decode: DecodeConfig) -> int:
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(decode.min_time.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"decode.min_time: {decode.min_time!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise ConfigError(f"decode.min_time: {decode.min_time!r} needs a time zone (e.g. Z)")
    return int(dt.timestamp() * 1000)


def from_dict(data: Mapping[str, object]) -> Config:
    sections: dict[str, object] = {}
    gateways: dict[str, GatewayInfo] = {}
    valid = [*_SECTIONS, "gateways"]
    for name, table in data.items():
        if name == "gateways":
            if not isinstance(table, dict):
                raise ConfigError("gateways: expected a table of [gateways.<id>] tables")
            for gw, info in table.items():
                gateways[gw] = _build(GatewayInfo, info, f"gateways.{gw}")
        elif name in _SECTIONS:
            sections[name] = _build(_SECTIONS[name], table, name)
        else:
            raise ConfigError(f"unknown section {name!r}{_suggest(name, valid)}")
    config = Config(**sections, gateways=gateways)  # type: ignore[arg-type]
    _check(config)
    return config


def _with_gateways_file(config: Config, path: Path) -> Config:
    """Merge the gateway registry file; a gateway listed in both places is an error, not a guess."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"service.gateways_file: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"service.gateways_file: {path}: {exc}") from None
    extra = set(data) - {"gateways"}
    if extra:
        raise ConfigError(
            f"service.gateways_file: {path} may hold only [gateways.<id>] tables, not {sorted(extra)}"
        )
    registry = from_dict(data).gateways
    both = sorted(set(registry) & set(config.gateways))
    if both:
        raise ConfigError(f"service.gateways_file: gateways {both} are also in the config file")
    return dataclasses.replace(config, gateways={**config.gateways, **registry})


def override(config: Config, key: str, text: str) -> Config:
    """Return `config` with the dotted `key` set from text (a flag or an environment value)."""
    section, _, name = key.partition(".")
    if section not in _SECTIONS:
        raise ConfigError(f"unknown key {key!r}")
    sub = getattr(config, section)
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if name not in fields:
        raise ConfigError(f"unknown key {key!r}{_suggest(name, list(fields))}")
    value = _convert(fields[name], _coerce_text(fields[name], text, key), key)
    new = dataclasses.replace(config, **{section: dataclasses.replace(sub, **{name: value})})
    _check(new)
    return new


def get(config: Config, key: str) -> object:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def load(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Defaults, then the TOML file (if any), then `ENV` secrets, then flag `overrides` (key -> text)."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    config = from_dict(data)
    if config.service.gateways_file:
        config = _with_gateways_file(config, Path(path or ".").parent / config.service.gateways_file)
    env = os.environ if env is None else env
    for var, key in ENV.items():
        if env.get(var):
            config = override(config, key, env[var])
    for key, text in (overrides or {}).items():
        config = override(config, key, text)
    return config
