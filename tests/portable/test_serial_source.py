"""The serial source's one buffer (edge/sources/serial.py, 256 B): the longest lines a station
sends, arriving back to back in reads larger than the room left, all decode; nothing is counted
as an error."""

import asyncio

from devices.thermometer.sim_encode import encode
from edge import config
from edge.sources.serial import SerialSource


class _Link:
    """A serial link that delivers `data` in reads of up to `chunk` bytes, then dies."""

    def __init__(self, data, chunk):
        self.data = data
        self.chunk = chunk

    async def readinto(self, mv, timeout_ms):
        if not self.data:
            raise OSError("unplugged")
        n = min(len(mv), self.chunk, len(self.data))
        mv[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def close(self):
        pass


class _Runtime:
    def log(self, msg):
        pass


def test_long_lines_in_large_reads_all_decode():
    ids = ["gate-%s" % (c * 27) for c in "abcdef"]  # 32-byte ids: the longest a station has
    lines = b"".join(encode(i, (36.61, 21.5, 7, 120, True)) for i in ids)
    assert len(lines) > 3 * 64
    raw = {"gateway_id": "gw", "broker": {"host": "h"},
           "sources": [{"kind": "thermometer", "transport": "serial", "port": "/dev/x", "sensors": ids}]}
    cfg = config.validate(raw)["sources"][0]
    got = []
    src = SerialSource(cfg, _Runtime(), lambda sensor, kind, fields, urgent, alarm: got.append(sensor))
    for chunk in (300, 97, 1):
        got.clear()
        try:
            asyncio.run(src.pump(_Link(lines, chunk)))
        except OSError:
            pass
        assert got == ids, (chunk, got)
        assert src.errors == {}, src.errors
        src.filter = type(src.filter)(src.codec, None, 0, 300000, ids)  # forget: the next run reports again


def test_alarm_limits_override_the_kinds_own():
    # A source's `alarm_limits` hold only the overridden names; the kind's own give the rest.
    raw = {"gateway_id": "gw", "broker": {"host": "h"},
           "sources": [{"kind": "thermometer", "transport": "serial", "port": "/dev/x", "sensors": ["g1"]},
                       {"kind": "thermometer", "transport": "serial", "port": "/dev/y", "sensors": ["g1"],
                        "alarm_limits": {"fever_c": 38.0}}]}
    plain, tuned = config.validate(raw)["sources"]
    for cfg, alarms in ((plain, ["fever", "fever"]), (tuned, [None, "fever"])):
        got = []
        src = SerialSource(cfg, _Runtime(), lambda sensor, kind, fields, urgent, alarm: got.append(alarm))
        for n, body in enumerate((37.5, 38.5)):  # the default threshold is 37.3
            assert src.take("g1", (body, 21.5, n, 120, True), n)
        assert got == alarms, (cfg.get("alarm_limits"), got)
