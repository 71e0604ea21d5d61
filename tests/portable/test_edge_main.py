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
