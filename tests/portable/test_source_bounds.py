"""What a source keeps per id it has never been told about is bounded (issue 10): error rows for at
most 16 sensor ids plus the port's and one "(other ids)" row, and the MQTT source's redelivery
check for the configured lids and 8 more topics. Nothing is lost: every reading is still counted."""

from edge import config
from edge.sources import PORT_DOWN, UNKNOWN_SENSOR, Source
from edge.sources.mqtt import MqttSource


class _Runtime:
    def log(self, msg):
        pass

    def ssl_context(self, broker):
        return None


def _cfg(source):
    raw = {"gateway_id": "gw", "broker": {"host": "h"}, "site_broker": {"host": "h"}, "sources": [source]}
    return config.validate(raw)


def test_a_flood_of_unknown_ids_keeps_a_bounded_number_of_error_rows():
    cfg = _cfg({"kind": "parking", "transport": "serial", "port": "/dev/x", "sensors": ["P-00001"]})
    src = Source(cfg["sources"][0], _Runtime(), lambda *a: None)
    for i in range(300):
        assert src.take("X-%d" % i, None, 0) is False
    assert len(src.errors) == 17, len(src.errors)  # 16 ids and "(other ids)"
    total = 0
    for who in src.errors:
        total += src.errors[who][UNKNOWN_SENSOR]
    assert total == 300 and src.errors["(other ids)"][UNKNOWN_SENSOR] == 284
    assert src.errors["X-0"][UNKNOWN_SENSOR] == 1  # the first ids keep their own rows
    src.error("/dev/x", PORT_DOWN)  # the port's own row is never folded into the others
    assert src.errors["/dev/x"][PORT_DOWN] == 1
    report = src.error_report()
    assert report["(other ids)"] == {"unknown_sensor": 284} and report["/dev/x"] == {"port_down": 1}


def test_the_mqtt_redelivery_check_tracks_a_bounded_number_of_topics():
    cfg = _cfg({"kind": "manhole", "transport": "mqtt", "topic": "lids/+/up",
                "sensors": ["MH-%d" % i for i in range(4)]})
    src = MqttSource(cfg["sources"][0], _Runtime(), lambda *a: None, cfg["site_broker"], "gw-site")
    for i in range(100):
        src._on_message(b"lids/odd-%d/up" % i, b"x%d" % i)
    assert len(src._last) == 12 and src.untracked == 88  # 4 lids + 8
    row = src.errors["lids/+/up"]  # every message was still taken: queued, or decoded (not a lid's)
    decoded = 0
    for n in row:
        decoded += n
    assert len(src.queue) + decoded == 100, (len(src.queue), decoded)
    before = src.redelivered
    src._on_message(b"lids/odd-3/up", b"x3")  # a tracked topic: the redelivery is still caught
    assert src.redelivered == before + 1
    src._on_message(b"lids/odd-99/up", b"x99")  # an untracked one is taken, not checked
    assert src.redelivered == before + 1 and src.untracked == 89
    for key in src._last:  # 30-bit crcs, no copies of topics: small ints on a 32-bit board
        assert type(key) is int and 0 <= key < 1 << 30 and 0 <= src._last[key] < 1 << 30


def test_an_unlisted_mqtt_source_tracks_64_topics():
    cfg = _cfg({"kind": "manhole", "transport": "mqtt", "topic": "lids/+/up"})
    src = MqttSource(cfg["sources"][0], _Runtime(), lambda *a: None, cfg["site_broker"], "gw-site")
    for i in range(100):
        src._on_message(b"lids/%d/up" % i, b"%d" % i)
    assert len(src._last) == 64 and src.untracked == 36
