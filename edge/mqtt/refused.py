"""The MQTT errors a healthy gateway never meets; reached through edge.mqtt.errors.

A separate module so that a gateway loads these classes only when a broker refuses it, stalls,
or sends bad bytes, or when the configuration is wrong (MicroPython keeps loaded code on the
heap). edge.mqtt.errors documents the hierarchy; every class here is an `MQTTError`.
"""

from edge.mqtt.errors import ConnectionLost, MQTTError


class KeepaliveTimeout(ConnectionLost):
    """The broker stopped answering (no PINGRESP / CONNACK in time): the connection was dropped."""


class ProtocolError(MQTTError):
    """The broker sent bytes that are not valid MQTT 3.1.1 (the connection is dropped, as the spec says)."""


class PacketTooLarge(MQTTError):
    """A packet does not fit the preallocated buffer (or exceeds MQTT's 268435455-byte limit)."""


class SubscribeRefused(MQTTError):
    """SUBACK return code 0x80: the broker refused the subscription (usually the ACL)."""


class ConnectRefused(MQTTError):
    """CONNACK with a non-zero return code; `code` is that code (1..5, or an unknown one)."""

    code = 0

    def __init__(self, msg, code=0):
        super().__init__(msg)
        self.code = code


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
