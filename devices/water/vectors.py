"""Water station register-data vectors: (name, hex, expected consumed, (None, fields) or error code).

The data is the 36 bytes after the byte count of a read of registers 0..17 (default ABCD word
order; VECTORS_CDAB holds the word-swapped ones). The data block has no header or CRC, so the
only codec errors are BAD_VALUE (NaN, inf, out of range) and "need more"; leading garbage and
bad CRCs are caught one layer down by devices.common.modbus (see tests/portable/test_modbus_frames.py).
"""

from devices.common.errors import BAD_VALUE

_GOOD = (
    "40e80000" "41080000" "41900000" "3f000000" "41040000" "43e10000" "3fc00000" "43a00000" "41940000"
)
_GOOD_FIELDS = (7.25, 8.5, 18.0, 0.5, 8.25, 450.0, 1.5, 320.0, 18.5)

VECTORS = [
    ("typical river station", _GOOD, 36, (None, _GOOD_FIELDS)),
    ("two reads back to back", _GOOD + _GOOD, 36, (None, _GOOD_FIELDS)),
    (
        "negative level, flow and temperature are legal",
        "40d00000" "00000000" "00000000" "00000000" "00000000" "00000000" "bf000000" "c2f00000" "c0200000",
        36,
        (None, (6.5, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5, -120.0, -2.5)),
    ),
    ("all registers zero (probe warming up)", "00" * 36, 36, (None, (0.0,) * 9)),
    (
        "level 3.5 m (overflow alarm, still a reading)",
        "40e80000" "41080000" "41900000" "3f000000" "41040000" "43e10000" "40600000" "43a00000" "41940000",
        36,
        (None, (7.25, 8.5, 18.0, 0.5, 8.25, 450.0, 3.5, 320.0, 18.5)),
    ),
    ("empty: need more", "", 0, None),
    ("35 bytes: need more", _GOOD[:70], 0, None),
    ("pH NaN", "7fc00000" + _GOOD[8:], 36, BAD_VALUE),
    ("pH 14.5", "41680000" + _GOOD[8:], 36, BAD_VALUE),
    ("turbidity -1", _GOOD[:8] + "bf800000" + _GOOD[16:], 36, BAD_VALUE),
    ("conductivity +inf", _GOOD[:40] + "7f800000" + _GOOD[48:], 36, BAD_VALUE),
    ("all 0xFF (bus idle read as data)", "ff" * 36, 36, BAD_VALUE),
]

VECTORS_CDAB = [
    (
        "typical river station, word-swapped",
        "000040e8" "00004108" "00004190" "00003f00" "00004104" "000043e1" "00003fc0" "000043a0" "00004194",
        36,
        (None, _GOOD_FIELDS),
    ),
    ("ABCD data read as CDAB", _GOOD, 36, BAD_VALUE),
]
