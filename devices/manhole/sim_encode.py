"""The host-side half of the manhole codec: payloads from readings, units and the public limits,
for simulators, tests and host tools, which import it by name (`from devices.manhole import sim_encode`).

Named sim_* so that `provisioning.firmware.modules_for` leaves it off a board image: a gateway only
decodes, and loaded code (every function, every module global) costs heap on MicroPython. The
JSON keys and types come from the codec's own table, so the two halves cannot disagree on them.
"""

from devices.manhole.codec import _SPEC, FIELDS

UNITS = ("deg", "", "", "cm", "ppm", "ppm", "mV", "dBm")  # aligned with FIELDS

MAX_DEPTH = 3  # JSON nesting decode accepts: the message is flat, a little room for vendor extras
MAX_ID_CHARS = 32  # devId length

_DECIMALS = (1, 0, 0, 1, 1, 2, 0, 0)  # what a lid sends, per float field
_BOOL = 1  # the codec's _B and _I, the low bits of a _SPEC type (its consts are folded away)
_INT = 2


def _quote(s):
    """A JSON string, non-ASCII kept as UTF-8 so both interpreters emit the same bytes."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _fixed(v, d):
    """`v` with `d` decimals by integer arithmetic: identical text on CPython and MicroPython."""
    scale = 10**d
    q = int(v * scale + (0.5 if v >= 0 else -0.5))
    sign = "-" if q < 0 else ""
    q = -q if q < 0 else q
    if d == 0:
        return sign + str(q)
    frac = str(q % scale)
    return sign + str(q // scale) + "." + "0" * (d - len(frac)) + frac


def encode(sensor_id, fields, ts=None, corrupt=None):
    """The JSON payload for `fields` (None fields left out).

    `corrupt` names a FIELDS entry to send as a JSON string (the simulator's "bad_crc" fault:
    JSON has no CRC, so a type-corrupted field stands in for a damaged frame).
    """
    parts = ['{"devId":', _quote(sensor_id)]
    if ts is not None:
        parts.append(',"ts":' + str(ts))
    for i in range(len(FIELDS)):
        v = fields[i]
        if v is None:
            continue
        key = _SPEC[4 * i]
        typ = _SPEC[4 * i + 1] & 3
        if typ == _BOOL:
            text = "true" if v else "false"
        elif typ == _INT:
            text = str(v)
        else:
            text = _fixed(v, _DECIMALS[i])
        if corrupt == FIELDS[i]:
            text = '"' + text + '"'
        parts.append(',"' + key + '":' + text)
    parts.append("}")
    return "".join(parts).encode("utf-8")
