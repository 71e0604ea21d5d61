"""Manhole lid wire vectors: (name, hex payload, expected consumed, (devId, fields) or error code).

The payloads are written as text where they are text, for review; `_h` turns them into the hex
the contract asks for. Each payload is one whole MQTT message, so every error consumes it all.
"""

from devices.common.errors import BAD_LENGTH, BAD_SYNTAX, BAD_VALUE


def _h(text):
    return (text.encode("utf-8") if isinstance(text, str) else text).hex()


_FULL = (
    '{"devId":"MH-0123","ts":1764140000,"tilt":2.5,"open":false,"displaced":false,'
    '"water_cm":35.0,"ch4_ppm":12.0,"h2s_ppm":0.40,"bat_mv":3520,"rssi":-87}'
)
_REQ = '"devId":"MH-7","open":false,"displaced":false,"bat_mv":3600'
_OD = '"open":false,"displaced":false'  # lid shut and seated
_OVERSIZE = '{"tilt":1.0,' + _REQ + ',"pad":"' + "x" * 960 + '"}'

VECTORS = [
    ("full", _h(_FULL), 148, ("MH-0123", (2.5, False, False, 35.0, 12.0, 0.4, 3520, -87))),
    (
        "minimal",
        _h('{"devId":"MH-7","tilt":0.0,"open":false,"displaced":false,"bat_mv":3600}'),
        72,
        ("MH-7", (0.0, False, False, None, None, None, 3600, None)),
    ),
    (
        "chinese id, lid open",
        _h(
            '{"devId":"西湖-井盖-08","tilt":85.0,"open":true,"displaced":false,"water_cm":20.5,'
            '"ch4_ppm":8.5,"h2s_ppm":0.25,"bat_mv":3480}'
        ),
        129,
        ("西湖-井盖-08", (85.0, True, False, 20.5, 8.5, 0.25, 3480, None)),
    ),
    (
        "ints for floats, spaces, unknown key, null optional, newline",
        _h('{ "devId": "MH-9", "tilt": 3, ' + _REQ[15:] + ', "water_cm": 40, "fw": "1.2", "rssi": null }\n'),
        120,
        ("MH-9", (3.0, False, False, 40.0, None, None, 3600, None)),
    ),
    (
        "displaced, overflow",
        _h('{"devId":"MH-1","tilt":17.5,"open":false,"displaced":true,"water_cm":212.5,"bat_mv":3300}'),
        89,
        ("MH-1", (17.5, False, True, 212.5, None, None, 3300, None)),
    ),
    ("empty: need more", "", 0, None),
    ("garbage", "80ff00417a", 5, BAD_SYNTAX),
    ("truncated JSON", _h(_FULL[:60]), 60, BAD_SYNTAX),
    ("two messages in one payload", _h(_FULL + _FULL), 296, BAD_SYNTAX),
    ("top level array", _h("[1,2,3]"), 7, BAD_SYNTAX),
    ("nested too deep", _h('{"devId":"MH-1","x":[[[[1]]]]}'), 30, BAD_SYNTAX),
    ("invalid UTF-8 in id", _h(b'{"devId":"MH-\xff","tilt":1.0}'), 27, BAD_SYNTAX),
    ("tilt as string", _h('{"tilt":"2.5",' + _REQ + "}"), 74, BAD_SYNTAX),
    ("open as 0/1", _h('{"tilt":2.5,"devId":"MH-7","open":0,"displaced":false,"bat_mv":1}'), 65, BAD_SYNTAX),
    ("tilt as bool", _h('{"tilt":true,' + _REQ + "}"), 73, BAD_SYNTAX),
    ("battery as float", _h('{"tilt":1.0,"devId":"MH-7",' + _OD + ',"bat_mv":3.52}'), 72, BAD_SYNTAX),
    ("missing tilt", _h("{" + _REQ + "}"), 61, BAD_SYNTAX),
    ("devId not a string", _h('{"devId":7,"tilt":1.0,' + _OD + ',"bat_mv":1}'), 64, BAD_SYNTAX),
    ("devId empty", _h('{"devId":"","tilt":1.0,' + _OD + ',"bat_mv":1}'), 65, BAD_VALUE),
    ("tilt out of range", _h('{"tilt":200.0,' + _REQ + "}"), 74, BAD_VALUE),
    ("negative battery", _h('{"tilt":1.0,"devId":"MH-7",' + _OD + ',"bat_mv":-5}'), 70, BAD_VALUE),
    ("water 1e999 (inf)", _h('{"tilt":1.0,"water_cm":1e999,' + _REQ + "}"), 89, BAD_VALUE),
    ("huge int", _h('{"tilt":1.0,"ch4_ppm":99999999999999999999999,' + _REQ + "}"), 106, BAD_VALUE),
    ("ts negative", _h('{"tilt":1.0,"ts":-1,' + _REQ + "}"), 80, BAD_VALUE),
    ("oversized payload", _h(_OVERSIZE), 1041, BAD_LENGTH),
]
