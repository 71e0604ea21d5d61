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


_REFUSED_NAMES = ("UnacceptableProtocol", "IdentifierRejected", "ServerUnavailable", "BadCredentials",
                  "NotAuthorised")


def __getattr__(name):
    """The ConnectRefused subclasses live in edge.mqtt.refused, loaded on the first refusal: a
    gateway that is never refused does not carry them on its heap."""
    if name in _REFUSED_NAMES:
        from edge.mqtt import refused as r

        return getattr(r, name)
    raise AttributeError(name)


def refused(code):
    """The typed error for a CONNACK return code (a plain ConnectRefused for codes 6..255)."""
    from edge.mqtt.refused import refused as make

    return make(code)
