"""The typed result a codec returns for input it rejects.

Codecs never raise on bad wire data and never invent a reading: `decode` returns
`(consumed, DecodeError)` so the caller can count the error per sensor and resynchronise by
skipping `consumed` bytes. Error codes are small ints so a counter table is a preallocated list.

The codes are the indexes of NAMES, the names status reports count errors under:

    BAD_HEADER = 1        no frame start where one was expected (garbage, resync)
    BAD_LENGTH = 2        a length field out of range
    BAD_CRC = 3           checksum / CRC mismatch
    BAD_VALUE = 4         a field outside its physical or documented range
    BAD_SYNTAX = 5        text frames: not parseable (JSON, ASCII fields)
    UNSUPPORTED = 6       well-formed but a type / version / function we do not know
    DEVICE_EXCEPTION = 7  the device answered with an exception (Modbus)
    TIMEOUT = 8           no (complete) answer in time; reported by masters, not codecs

`from devices.common.errors import BAD_CRC` works as usual, but the names are looked up in NAMES
(the module `__getattr__` below) rather than stored: on MicroPython every module global costs a
dict slot and an interned name on the heap, for the whole run. Codecs fold the codes they return
into private `_BAD_CRC = const(3)` copies, which cost nothing at run time; their wire vectors pin
those copies to the codes above.
"""

from devices.common.compat import const

NAMES = (
    "",
    "bad_header",
    "bad_length",
    "bad_crc",
    "bad_value",
    "bad_syntax",
    "unsupported",
    "device_exception",
    "timeout",
)
N_CODES = const(9)


def __getattr__(name):
    """BAD_CRC and the other code names: the index of the name, lower-cased, in NAMES."""
    if name.isupper() and name.lower() in NAMES:
        return NAMES.index(name.lower())
    raise AttributeError(name)


class DecodeError:
    """Why a frame was rejected: a code from this module plus a short human detail.

    Made for every bad frame, so it holds only these two attributes; compare errors by `.code`.
    """

    __slots__ = ("code", "detail")

    def __init__(self, code, detail=""):
        self.code = code
        self.detail = detail

    @property
    def name(self):
        return NAMES[self.code] if 0 <= self.code < N_CODES else "unknown"

    def __repr__(self):
        return "DecodeError(%s, %r)" % (self.name, self.detail)
