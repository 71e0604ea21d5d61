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


def _tls_config(ca):
    return CONFIG.replace('"host": "127.0.0.1"', '"host": "127.0.0.1", "tls": true, "ca_file": "%s"' % ca)


def test_relative_ca_file_is_read_beside_the_config():
    """A board image carries its CA beside its config (a-<hash>/ca.pem); the config names it ca.pem."""
    path = _write(_tls_config("ca-beside.pem"))
    ca = path.rsplit("/", 1)[0] + "/ca-beside.pem"
    with open(ca, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\n")
    try:
        cfg = load_config(path)
    finally:
        os.remove(path)
        os.remove(ca)
    assert cfg["broker"]["ca_file"] == ca


def test_missing_ca_file_is_a_config_error_naming_the_file():
    """Not a bare `OSError: [Errno 2] ENOENT` from deep in the TLS setup."""
    path = _write(_tls_config("no-such-ca.pem"))
    try:
        load_config(path)
    except ValueError as exc:
        assert "config.broker.ca_file" in str(exc) and "no-such-ca.pem" in str(exc), str(exc)
    else:
        raise AssertionError("accepted a ca_file that is not there")
    finally:
        os.remove(path)


def test_missing_client_key_is_a_config_error_naming_the_file():
    """A client certificate whose key is not on the gateway stops it at boot, naming the file."""
    path = _write(_tls_config("ca-c.pem").replace(
        '"ca_file"', '"certfile": "client-c.crt", "keyfile": "no-such-client.key", "ca_file"'))
    folder = path.rsplit("/", 1)[0]
    for name in ("ca-c.pem", "client-c.crt"):
        with open(folder + "/" + name, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
    try:
        load_config(path)
    except ValueError as exc:
        assert "config.broker.keyfile" in str(exc) and "no-such-client.key" in str(exc), str(exc)
    else:
        raise AssertionError("accepted a keyfile that is not there")
    finally:
        os.remove(path)
        os.remove(folder + "/ca-c.pem")
        os.remove(folder + "/client-c.crt")


def test_pem_blocks_become_der_for_micropythons_mbedtls():
    """MicroPython's mbedtls parses no PEM: the certificate and the key body go to it as DER."""
    from edge.ports.tls import der_certs

    path = _write("-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n"
                  "-----BEGIN PRIVATE KEY-----\r\nAwQF\r\n-----END PRIVATE KEY-----\r\n")
    try:
        assert der_certs(path) == [b"\x00\x01\x02"]
        assert der_certs(path, b"PRIVATE KEY") == [b"\x03\x04\x05"]
    finally:
        os.remove(path)


# The config `citybrain provision build` checked (edge/checked.py): config.checked beside config.json.

def _checked(path, text, changes=None):
    """Write `path` (config.json) and the config.checked a build writes beside it: the hash of
    config.json's bytes and of the body, the version, then the validated config (plus `changes`,
    so a test can tell which of the two files the config came from)."""
    import json
    from hashlib import sha256

    from edge import VERSION
    from edge.checked import name
    from edge.config import validate

    with open(path, "w") as f:
        f.write(text)
    cfg = validate(json.loads(text))
    cfg["uplink"]["max_inflight"] = None  # as a build leaves it: the board fills in its own
    for key in changes or {}:
        cfg[key] = changes[key]
    body = json.dumps(cfg)
    digest = hexlify(sha256(text.encode() + body.encode()).digest()).decode()
    with open(name(path), "w") as f:
        f.write("%s %s\n%s" % (digest, VERSION, body))
    return name(path)


def _load_both(text, edit=None, head=None, changes=None):
    """load_config on a config.json and its config.checked; `edit` rewrites config.json after the
    check (a hand edit on the board), `head` replaces the checked file's first line."""
    path = _write("")
    side = _checked(path, text, changes if changes is not None else {"site": "from-checked"})
    if edit is not None:
        with open(path, "w") as f:
            f.write(edit)
    if head is not None:
        with open(side) as f:
            body = f.read().split("\n", 1)[1]
        with open(side, "w") as f:
            f.write(head + "\n" + body)
    if IS_MICROPYTHON:  # the test made the checked file with edge.config: forget it again
        from edge.compat import unload

        unload("edge.config")
    try:
        return load_config(path)
    finally:
        os.remove(path)
        os.remove(side)


def test_a_config_checked_by_the_build_is_taken_without_edge_config():
    """edge.config's names would stay interned for the whole run: an unchanged config.json with
    its checked file boots from the checked file alone (site comes from there)."""
    cfg = _load_both(CONFIG)
    assert cfg["site"] == "from-checked" and cfg["gateway_id"] == "gw-1"
    assert cfg["uplink"]["max_inflight"] == (2 if IS_MICROPYTHON else 4)  # the runtime's default
    if IS_MICROPYTHON:
        assert "edge.config" not in sys.modules and "edge.checked" not in sys.modules


def test_a_config_edited_after_the_build_is_validated_again():
    """A field tech's edit on the board is never booted from the stale checked file."""
    cfg = _load_both(CONFIG, edit=CONFIG.replace("gw-1", "gw-2"))
    assert cfg["gateway_id"] == "gw-2" and cfg["site"] is None


def test_a_bad_edit_after_the_build_is_refused_naming_the_key():
    try:
        _load_both(CONFIG, edit=CONFIG.replace('"sources"', '"source"'))
    except ValueError as exc:
        assert "sources" in str(exc) and "source" in str(exc), str(exc)
    else:
        raise AssertionError("booted a hand-edited config without its sources")


def test_a_checked_file_edited_or_from_another_version_is_not_trusted():
    from edge import VERSION

    digest = CONFIG  # any first line whose hash is not the files'
    assert _load_both(CONFIG, head="0" * 64 + " " + VERSION)["site"] is None
    assert _load_both(CONFIG, head=digest[:8])["site"] is None
    # The right hash, another version: the board's code may read the config differently.
    path = _write("")
    side = _checked(path, CONFIG, {"site": "from-checked"})
    with open(side) as f:
        first, body = f.read().split("\n", 1)
    with open(side, "w") as f:
        f.write(first.split()[0] + " 0.0.0-other\n" + body)
    try:
        assert load_config(path)["site"] is None
    finally:
        os.remove(path)
        os.remove(side)


def test_slaves_of_one_layout_share_a_read_plan_from_the_checked_file():
    """JSON makes one object per slave; the board shares them again, as edge.config did."""
    bus = CONFIG.replace(
        '{"kind": "parking", "transport": "serial", "port": "/dev/null"}',
        '{"kind": "water", "transport": "modbus", "port": "/dev/null", "slaves": ['
        '{"address": 1, "sensor": "W-1"}, {"address": 2, "sensor": "W-2"}]}')
    cfg = _load_both(bus)
    slaves = cfg["sources"][0]["slaves"]
    assert cfg["site"] == "from-checked" and slaves[0]["plan"] is slaves[1]["plan"]
