"""The typed result a codec returns for input it rejects.

Codecs never raise on bad wire data and never invent a reading: `decode` returns
`(consumed, DecodeError)` so the caller can count the error per sensor and resynchronise by
skipping `consumed` bytes. Error codes are small ints so a counter table is a preallocated list.
"""

from edge.compat import const

BAD_HEADER = const(1)  # no frame start where one was expected (garbage, resync)
BAD_LENGTH = const(2)  # a length field out of range
BAD_CRC = const(3)  # checksum / CRC mismatch
BAD_VALUE = const(4)  # a field outside its physical or documented range
BAD_SYNTAX = const(5)  # text frames: not parseable (JSON, ASCII fields)
UNSUPPORTED = const(6)  # well-formed but a type / version / function we do not know
DEVICE_EXCEPTION = const(7)  # the device answered with an exception (Modbus)
TIMEOUT = const(8)  # no (complete) answer in time; reported by masters, not codecs

NAMES = ("", "bad_header", "bad_length", "bad_crc", "bad_value", "bad_syntax", "unsupported",
         "device_exception", "timeout")
N_CODES = const(9)


class DecodeError:
    """Why a frame was rejected: a code from this module plus a short human detail."""

    __slots__ = ("code", "detail")

    def __init__(self, code, detail=""):
        self.code = code
        self.detail = detail

    @property
    def name(self):
        return NAMES[self.code] if 0 <= self.code < N_CODES else "unknown"

    def __repr__(self):
        return "DecodeError(%s, %r)" % (self.name, self.detail)

    def __eq__(self, other):
        return isinstance(other, DecodeError) and other.code == self.code
