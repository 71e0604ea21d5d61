"""Collector config: the sample documents every option with its true default, unknown keys are
errors naming a suggestion, units parse, secrets come from the environment, and every flag in
`config.FLAGS` reaches its config key."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from collector import cli
from collector import config as cfg

SAMPLE = Path(cfg.__file__).with_name("sample.toml")


def test_sample_loads_to_defaults() -> None:
    assert cfg.load(SAMPLE, env={}) == cfg.Config()


def test_sample_documents_every_option_with_its_default(tmp_path: Path) -> None:
    # Uncomment every "# key = value" (and the example gateway header): still the defaults.
    text = SAMPLE.read_text()
    uncommented = re.sub(r"(?m)^# ((?:\[gateways\.[^\]]+\])|(?:[a-z_]+ = .*))$", r"\1", text)
    path = tmp_path / "full.toml"
    path.write_text(uncommented)
    full = cfg.load(path, env={})
    assert dataclasses.replace(full, gateways={}) == cfg.Config()
    assert full.gateways == {"gw-0001": cfg.GatewayInfo(site="wulin-p3", district="xihu", heartbeat=120.0)}
    for section in dataclasses.fields(cfg.Config):
        if section.name == "gateways":
            continue
        for f in dataclasses.fields(getattr(cfg.Config(), section.name)):
            block = re.search(rf"(?ms)^\[{section.name}\]$(.*?)(?=^\[|\Z)", text)
            assert block is not None, section.name
            assert re.search(rf"(?m)^# {f.name} = ", block.group(1)), f"{section.name}.{f.name} not in sample"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"hots": "x"}}, "unknown key 'mqtt.hots'; did you mean 'host'?"),
        ({"mqt": {}}, "unknown section 'mqt'; did you mean 'mqtt'?"),
        ({"writer": {"flush_intervall": "1s"}}, "did you mean 'flush_interval'?"),
        ({"gateways": {"gw1": {"distrikt": "x"}}}, "'gateways.gw1.distrikt'; did you mean 'district'?"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port: expected int"),
        ({"mqtt": {"port": 70000}}, "mqtt.port"),
        ({"mqtt": {"tls": 1}}, "mqtt.tls: expected bool"),
        ({"mqtt": {"keepalive": "5 parsecs"}}, "mqtt.keepalive: expected a duration"),
        ({"storage": {"spool_max_bytes": "12 furlongs"}}, "storage.spool_max_bytes: expected a size"),
        ({"mqtt": {"share_group": "a/b"}}, "mqtt.share_group"),
        ({"influx": {"version": 2}}, "influx.org and influx.bucket"),
        ({"decode": {"min_time": "2020-01-01"}}, "needs a time zone"),
        ({"gateways": {"bad id!": {}}}, "gateways.bad id!"),
        ({"gateways": {"gw1": {"site": "a\nb"}}}, "control characters"),
        ({"gateways": {"gw.1": {}}}, "gateways.gw.1: a gateway id is 1-64 of A-Z a-z 0-9 _ : -"),
        ({"service": {"input": "kafka"}}, "service.input: 'kafka' is not mqtt or nats"),
        ({"nats": {"max_ack_pending": 0}}, "nats.max_ack_pending"),
        ({"nats": {"stream": "a.b"}}, "nats.stream"),
        ({"nats": {"servers": " , "}}, "nats.servers"),
        ({"nats": {"max_ack_pendin": 5}}, "did you mean 'max_ack_pending'?"),
        ({"service": {"input": "nats"}, "mqtt": {"topic_prefix": "hz.city"}}, "no '.' with service.input"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.from_dict(data)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1.5h", 5400.0), ("7d", 604800.0), (3, 3.0), (0.5, 0.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert cfg.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 << 20), ("64KiB", 65536), ("1GB", 10**9), ("10kb", 10_000), (4096, 4096), ("7", 7)],
)
def test_sizes(text: object, size: int) -> None:
    assert cfg.parse_size(text) == size


@pytest.mark.parametrize("bad", ["-1s", "5", "s", True, None, "1 week"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(cfg.ConfigError):
        cfg.parse_duration(bad)


def test_secrets_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\npassword = "from-file"\n[influx]\nversion = 2\norg = "o"\nbucket = "b"\n')
    env = {"CITYBRAIN_MQTT_PASSWORD": "from-env", "CITYBRAIN_INFLUX_TOKEN": "tok", "UNRELATED": "x"}
    c = cfg.load(path, env=env)
    assert c.mqtt.password == "from-env"
    assert c.influx.token == "tok"
    assert cfg.load(path, env={}).mqtt.password == "from-file"
    for var, key in cfg.ENV.items():
        assert cfg.get(cfg.load(None, env={var: "s3cret"}), key) == "s3cret"


def test_flags_override_after_environment() -> None:
    c = cfg.load(None, env={"CITYBRAIN_MQTT_USERNAME": "env"}, overrides={"mqtt.username": "flag"})
    assert c.mqtt.username == "flag"


def _sample_value(key: str) -> tuple[str, object]:
    """A flag value different from the default, and what the config should then hold."""
    default = cfg.get(cfg.Config(), key)
    if isinstance(default, bool):
        return "true", True
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return "90s", 90.0
    return "Xval", "Xval"


def test_every_flag_reaches_its_config_key() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for flag, key, _ in cfg.FLAGS:
        text, expected = _sample_value(key)
        if key == "service.log_level":
            text, expected = "DEBUG", "DEBUG"
        if key == "mqtt.topic_prefix":
            text, expected = "town", "town"
        args = parser.parse_args(["run", flag, text])
        assert cli.overrides(args) == {key: text}, flag
        assert cfg.get(cfg.load(None, env={}, overrides=cli.overrides(args)), key) == expected, flag
    # No two flags for one key, no flag for an unknown key.
    keys = [key for _, key, _ in cfg.FLAGS]
    assert len(keys) == len(set(keys))


def test_bad_flag_value_is_an_error() -> None:
    with pytest.raises(cfg.ConfigError, match=r"mqtt\.port"):
        cfg.load(None, env={}, overrides={"mqtt.port": "eighty"})


def test_check_config_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["check-config", "--config", str(SAMPLE), "--mqtt-port", "1884"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "port = 1884" in out
    args = parser.parse_args(["check-config", "--mqtt-port", "x"])
    assert cli.run(args) == 2
    assert "mqtt.port" in capsys.readouterr().err


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "nope.toml", env={})


def test_gateways_file_from_provisioning(tmp_path: Path) -> None:
    (tmp_path / "gateways.toml").write_text('[gateways."gw-0002"]\nsite = "s2"\ndistrict = "d2"\n')
    path = tmp_path / "c.toml"
    path.write_text('[service]\ngateways_file = "gateways.toml"\n[gateways.gw-0001]\nsite = "s1"\n')
    c = cfg.load(path, env={})
    assert c.gateways == {
        "gw-0001": cfg.GatewayInfo(site="s1"),
        "gw-0002": cfg.GatewayInfo(site="s2", district="d2"),
    }
    (tmp_path / "gateways.toml").write_text('[gateways.gw-0001]\nsite = "other"\n')
    with pytest.raises(cfg.ConfigError, match="also in the config file"):
        cfg.load(path, env={})
    (tmp_path / "gateways.toml").write_text('[mqtt]\nhost = "x"\n')
    with pytest.raises(cfg.ConfigError, match="only"):
        cfg.load(path, env={})
