"""One root exception for the MQTT client, so the agent's reconnect loop catches exactly one type.

Transport failures (OSError, EOF, timeouts) are converted to `ConnectionLost` where they happen;
a broker's refusal is a `ConnectRefused` subclass named after its CONNACK return code, because the
agent reacts differently to each (bad credentials: stop and report; unavailable: back off, retry).
Misuse of the API (a QoS of 2, a password without a username) raises ValueError instead: retrying
cannot fix it.
"""


class MQTTError(Exception):
    """Root of everything the client raises about the broker or the connection."""


class ConnectionLost(MQTTError):
    """The TCP/TLS connection failed, closed, or could not be opened (refused, reset, EOF)."""


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
