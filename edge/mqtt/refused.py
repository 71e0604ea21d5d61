"""The ConnectRefused subclass for each CONNACK return code; reached through edge.mqtt.errors.

A separate module so that a gateway loads these classes only when a broker refuses it (MicroPython
keeps loaded code on the heap).
"""

from edge.mqtt.errors import ConnectRefused


class UnacceptableProtocol(ConnectRefused):
    code = 1


class IdentifierRejected(ConnectRefused):
    code = 2


class ServerUnavailable(ConnectRefused):
    code = 3


class BadCredentials(ConnectRefused):
    code = 4


class NotAuthorised(ConnectRefused):
    code = 5


_REFUSED = (
    None,
    (UnacceptableProtocol, "unacceptable protocol version"),
    (IdentifierRejected, "client identifier rejected"),
    (ServerUnavailable, "server unavailable"),
    (BadCredentials, "bad user name or password"),
    (NotAuthorised, "not authorised"),
)


def refused(code):
    """The typed error for a CONNACK return code (a plain ConnectRefused for codes 6..255)."""
    if 0 < code < len(_REFUSED):
        cls, text = _REFUSED[code]
        return cls("connection refused: " + text, code)
    return ConnectRefused("connection refused: return code %d" % code, code)
