"""One root exception for the MQTT client, so the agent's reconnect loop catches exactly one type.

Transport failures (OSError, EOF, timeouts) are converted to `ConnectionLost` where they happen;
a broker's refusal is a `ConnectRefused` subclass named after its CONNACK return code, because the
agent reacts differently to each (bad credentials: stop and report; unavailable: back off, retry).
Misuse of the API (a QoS of 2, a password without a username) raises ValueError instead: retrying
cannot fix it.

Only the two classes every gateway meets live here. The others (`KeepaliveTimeout`,
`ProtocolError`, `PacketTooLarge`, `SubscribeRefused`, `ConnectRefused` and its subclasses) live
in edge.mqtt.refused and are reached through this module (`from edge.mqtt.errors import
ProtocolError`, or `errors.ProtocolError` at the raise): MicroPython keeps loaded code on the
heap, and a gateway whose broker never misbehaves never loads them.
"""


class MQTTError(Exception):
    """Root of everything the client raises about the broker or the connection."""


class ConnectionLost(MQTTError):
    """The TCP/TLS connection failed, closed, or could not be opened (refused, reset, EOF)."""


def __getattr__(name):
    """The rarer error classes (and `refused(code)`), loaded from edge.mqtt.refused on first use."""
    from edge.mqtt import refused

    return getattr(refused, name)
