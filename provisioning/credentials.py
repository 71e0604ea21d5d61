"""Gateway passwords and the Mosquitto password-file format.

Mosquitto 2.x stores `user:$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>`; writing it here (not by
shelling out to `mosquitto_passwd`) lets provisioning run on a laptop without Mosquitto installed.
A test checks that a real Mosquitto accepts the result.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes; the broker reads the count from the line


def new_password() -> str:
    """24 URL-safe characters (~143 bits): typed once by a tool, never by a person."""
    return secrets.token_urlsafe(18)


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify(password: str, stored: str) -> bool:
    """True if `password` matches a `$7$` line's hash (used by `provision check`)."""
    try:
        _, kind, iterations, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    salt = base64.b64decode(salt_b64)
    expected = base64.b64decode(digest_b64)
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), dklen=len(expected))
    return secrets.compare_digest(got, expected)
