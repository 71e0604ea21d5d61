"""The kind registry (devices/registry.py) against the codecs, on both interpreters: the codecs'
board-side copies (KIND_CODE, KIND, FIELDS, range constants) equal the table, and every value a
codec emits for its wire vectors and its simulator has the registered type and lies in range."""

import gc
import sys
from binascii import unhexlify

import devices
from devices import registry

_PY = {registry.BOOL: bool, registry.INT: int, registry.FLOAT: float}


def _check_fields(kind, fields, where):
    assert len(fields) == len(kind.fields), where
    for f, v in zip(kind.fields, fields):
        if v is None:
            continue
        assert type(v) is _PY[f.type], (where, f.name, v, f.type)
        if f.lo is not None:
            assert f.lo <= v <= f.hi, (where, f.name, v, f.lo, f.hi)


def _unload(kind, part):
    """Drop devices.<kind>.<part> once checked: all four kinds' vectors and simulators at once do
    not fit the 128K heap the portable tests run in under MicroPython."""
    name = "devices." + kind + "." + part
    if name in sys.modules:
        del sys.modules[name]
    pkg = sys.modules.get("devices." + kind)
    if pkg is not None and part in pkg.__dict__:
        delattr(pkg, part)
    gc.collect()


def test_table_shape():
    codes = [c for c, _, _ in registry.TABLE]
    names = [n for _, n, _ in registry.TABLE]
    assert len(set(codes)) == len(codes) and len(set(names)) == len(names)
    assert tuple(names) == devices.KINDS
    for kind in registry.by_code().values():
        assert len(set(kind.names)) == len(kind.names)
        # A field named like a tag the collector writes would shadow it in every query.
        for tag in ("gw", "sensor", "site", "district", "kind", "code", "time"):
            assert tag not in kind.names, (kind.name, tag)
        for f in kind.fields:
            assert f.type in registry.TYPES
            assert (f.lo is None) == (f.hi is None)
            if f.lo is not None:
                assert type(f.lo) is _PY[f.type] and type(f.hi) is _PY[f.type] and f.lo <= f.hi
            else:
                assert f.type == registry.BOOL  # every number a codec emits has a known range
    assert registry.by_name()["thermometer"].code == 4


def test_codecs_match_the_table():
    for code, kind in registry.by_code().items():
        codec = devices.load(kind.name)
        assert codec.KIND_CODE == code and codec.KIND == kind.name, kind.name
        assert tuple(codec.FIELDS) == kind.names, kind.name
        assert kind.codec() is codec


def test_ranges_match_the_codecs():
    k = registry.by_name()
    water = devices.load("water")
    assert tuple((f.lo, f.hi) for f in k["water"].fields) == tuple(water.RANGES)
    from devices.manhole.codec import _SPEC

    for i, f in enumerate(k["manhole"].fields):
        if f.type != registry.BOOL:
            assert (f.lo, f.hi) == (_SPEC[4 * i + 2], _SPEC[4 * i + 3]), f.name
    from devices.parking import sim_encode as p

    lim = dict((f.name, (f.lo, f.hi)) for f in k["parking"].fields)
    assert lim["event"] == (p.HEARTBEAT, p.DEPARTURE)
    assert lim["mag_x"] == lim["mag_y"] == lim["mag_z"] == (-p.MAG_LIMIT, p.MAG_LIMIT)
    assert lim["battery_mv"] == (p.BATT_MIN, p.BATT_MAX) and lim["rssi_dbm"] == (p.RSSI_MIN, 0)
    from devices.thermometer import sim_encode as t

    lim = dict((f.name, (f.lo, f.hi)) for f in k["thermometer"].fields)
    assert lim["body_c"] == (t.BODY_MIN / 100.0, t.BODY_MAX / 100.0)
    assert lim["ambient_c"] == (t.AMBIENT_MIN / 10.0, t.AMBIENT_MAX / 10.0)
    assert lim["distance_cm"] == (t.DIST_MIN, t.DIST_MAX)


def test_every_vector_emits_the_registered_types():
    checked = 0
    for kind in registry.by_code().values():
        codec = kind.codec()
        vectors = devices.load(kind.name, "vectors")
        for name in dir(vectors):
            if not name.startswith("VECTORS"):
                continue
            word_order = 1 if name.endswith("CDAB") else 0
            for vname, hx, _consumed, expected in getattr(vectors, name):
                if not isinstance(expected, tuple):
                    continue  # an error code or "need more": no reading
                data = unhexlify(hx)
                if kind.name == "water":
                    _n, got = codec.decode(data, word_order=word_order)
                else:
                    _n, got = codec.decode(data)
                assert isinstance(got, tuple), (kind.name, vname, got)
                _check_fields(kind, got[1], kind.name + " " + vname)
                checked += 1
        vectors = None
        _unload(kind.name, "vectors")
    assert checked >= 20, checked


def _simulated(kind, n):
    """Up to n decoded readings from the kind's simulator (1 s steps), or raise if it yields none."""
    codec = devices.load(kind)
    sim_mod = devices.load(kind, "sim")
    for sensors in (list(range(1, 9)), ["S-%05d" % i for i in range(1, 9)]):
        try:
            sim = sim_mod.Simulator(sensors, seed=3)
            sim.next_frame(1767225600000)
        except Exception:  # a simulator that wants the other id form
            continue
        out = []
        now = 1767225601000
        for _ in range(20000):
            frame = sim.next_frame(now)
            now += 1000
            if frame:
                _n, got = codec.decode(frame)
                if isinstance(got, tuple):
                    out.append(got[1])
                    if len(out) == n:
                        return out
        return out
    raise AssertionError("no simulator for " + kind)


def test_every_simulated_reading_emits_the_registered_types():
    for kind in registry.by_code().values():
        got = _simulated(kind.name, 30)
        assert len(got) == 30, (kind.name, len(got))
        for fields in got:
            _check_fields(kind, fields, kind.name + " sim")
        got = None
        _unload(kind.name, "sim")
