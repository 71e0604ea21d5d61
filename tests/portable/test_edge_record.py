"""Log records: stamped and unstamped readings round-trip with their types intact, and `parse`
finds the parts the uplink copies into a batch without decoding them."""

from edge import cbor, record


def _n_fields(kind):
    return 4 if kind in (1, 4) else None


def _decode(payload):
    """The reading a record holds, through `parse` and a CBOR decode of the parts it points at."""
    kind, ts, boot, uptime, ts_pos, f0, f1, _code = record.parse(payload, _n_fields)
    sensor = cbor.loads(payload[1 : ts_pos - 1])
    assert cbor.loads(payload[ts_pos - 1 : ts_pos]) == kind
    fmap = cbor.loads(payload[f0:f1])
    fields = tuple(fmap.get(i) for i in range(_n_fields(kind)))
    return sensor, kind, ts, fields, boot, uptime


def test_stamped_round_trip_keeps_types():
    w = cbor.Writer(256)
    record.encode(w, "杭州-P-1", 1, 1795676640553, (True, 3, -2.5, None))
    got = _decode(bytes(w.view()))
    assert got == ("杭州-P-1", 1, 1795676640553, (True, 3, -2.5, None), 0, 0)
    assert got[3][0] is True and isinstance(got[3][1], int) and not isinstance(got[3][1], bool)


def test_unstamped_keeps_boot_and_uptime():
    w = cbor.Writer(256)
    record.encode(w, "T-1", 4, None, (36.6, 21.0, 7, None), boot=12, uptime_ms=4321)
    assert _decode(bytes(w.view())) == ("T-1", 4, None, (36.6, 21.0, 7, None), 12, 4321)


def test_parse_points_at_the_fields_map():
    w = cbor.Writer(256)
    record.encode(w, "T-1", 4, None, (36.6, "x", 2**70, -1), boot=3, uptime_ms=70000)
    payload = bytes(w.view())
    kind, ts, boot, uptime, ts_pos, f0, f1, code = record.parse(payload, _n_fields)
    assert (kind, ts, boot, uptime, code) == (4, None, 3, 70000, None)
    assert payload[ts_pos] == 0xF6 and f0 == ts_pos + 1
    assert cbor.loads(payload[f0:f1]) == {0: 36.6, 1: "x", 2: 2**70, 3: -1}


def test_an_alarm_record_carries_its_code_last():
    for ts, head in ((1795676640553, 0x85), (None, 0x87)):
        w = cbor.Writer(256)
        record.encode(w, "T-1", 4, ts, (39.5, 21.0, 7, None), boot=3, uptime_ms=70000, alarm="fever")
        payload = bytes(w.view())
        assert payload[0] == head and payload.endswith(b"\x65fever")
        kind, ts2, boot, uptime, ts_pos, f0, f1, code = record.parse(payload, _n_fields)
        assert (kind, ts2, code) == (4, ts, "fever")
        assert cbor.loads(payload[f0:f1]) == {0: 39.5, 1: 21.0, 2: 7}
        # The same reading without the alarm: the same parts, one item less.
        w2 = cbor.Writer(256)
        record.encode(w2, "T-1", 4, ts, (39.5, 21.0, 7, None), boot=3, uptime_ms=70000)
        plain = bytes(w2.view())
        assert payload[1:len(plain)] == plain[1:] and record.parse(plain, _n_fields)[:7] == (
            kind, ts2, boot, uptime, ts_pos, f0, f1)


def test_wrong_shape_is_a_cbor_error():
    bad_records = (
        b"",
        b"\x80",
        b"\xa0",
        b"\x84\x61a\x01\x00\xa1\x09\x01",  # field index 9 of 4
        b"\x84\x61a\x01\x00\xa1\x00",  # truncated value
        b"\x84\x61a\x01\x00\xa1\x00\x01\x00",  # trailing byte
        b"\x84\x61a\x07\x00\xa0",  # a kind this firmware does not run
        b"\x84\x01\x01\x00\xa0",  # sensor is not text
        b"\x84\x61a\x01\x61t\xa0",  # ts is not an int
        b"\x84\x61a\x01\x00\xa1\x00\x81\x01",  # nested value
        b"\x86\x61a\x01\xf6\xa0\x01",  # uptime missing
        b"\x85\x61a\x01\x00\xa0",  # alarm code missing
        b"\x85\x61a\x01\x00\xa0\x01",  # alarm code not text
        b"\x85\x61a\x01\x00\xa0\x62f",  # alarm code truncated
        b"\x88\x61a\x01\x00\xa0",  # not a record's length
    )
    for bad in bad_records:
        try:
            record.parse(bad, _n_fields)
        except cbor.CBORError:
            continue
        raise AssertionError("accepted %r" % bad)
