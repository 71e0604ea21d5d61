"""Log records: stamped and unstamped readings round-trip with their types intact."""

from edge import cbor, record


def _n_fields(kind):
    return 4


def test_stamped_round_trip_keeps_types():
    w = cbor.Writer(256)
    record.encode(w, "杭州-P-1", 1, 1795676640553, (True, 3, -2.5, None))
    got = record.decode(bytes(w.view()), _n_fields)
    assert got == ("杭州-P-1", 1, 1795676640553, (True, 3, -2.5, None), 0, 0)
    assert got[3][0] is True and isinstance(got[3][1], int) and not isinstance(got[3][1], bool)


def test_unstamped_keeps_boot_and_uptime():
    w = cbor.Writer(256)
    record.encode(w, "T-1", 4, None, (36.6, 21.0, 7, None), boot=12, uptime_ms=4321)
    assert record.decode(bytes(w.view()), _n_fields) == ("T-1", 4, None, (36.6, 21.0, 7, None), 12, 4321)


def test_wrong_shape_is_a_cbor_error():
    for bad in (b"\x80", b"\xa0", b"\x84\x61a\x01\x00\xa1\x09\x01"):
        try:
            record.decode(bad, _n_fields)
        except cbor.CBORError:
            continue
        raise AssertionError("accepted %r" % bad)
