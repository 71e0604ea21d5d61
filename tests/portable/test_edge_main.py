"""Boot: the config is checked by edge.config, which a board then drops (its heap is for the run)."""

import os
import sys
from binascii import hexlify

from edge.compat import IS_MICROPYTHON
from edge.main import load_config

CONFIG = ('{"gateway_id": "gw-1", "broker": {"host": "127.0.0.1"}, '
          '"sources": [{"kind": "parking", "transport": "serial", "port": "/dev/null"}]}')


def _write(text):
    path = "/tmp/cb-main-" + hexlify(os.urandom(6)).decode() + ".json"
    with open(path, "w") as f:
        f.write(text)
    return path


def test_load_config_fills_defaults_then_drops_the_schema_on_micropython():
    path = _write(CONFIG)
    try:
        cfg = load_config(path)
    finally:
        os.remove(path)
    assert cfg["gateway_id"] == "gw-1" and cfg["uplink"]["batch_max"] == 50
    assert cfg["sources"][0]["baud"] == 9600
    if IS_MICROPYTHON:
        import edge

        assert "edge.config" not in sys.modules and "config" not in edge.__dict__


def test_bad_config_is_a_value_error_naming_the_key():
    path = _write(CONFIG.replace('"gateway_id"', '"gateway"'))
    try:
        load_config(path)
    except ValueError as exc:
        assert "gateway" in str(exc)
    else:
        raise AssertionError("accepted a config without gateway_id")
    finally:
        os.remove(path)
