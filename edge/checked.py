"""The board's short way to a valid config: the one `citybrain provision build` checked.

edge.config's complete validation (schema, help texts, "did you mean", Modbus read plans) interns
~120 names that a board keeps for the whole run (MicroPython never frees an interned name): at 128
sensors they cost a sixth qstr pool and ~6 KB of heap (docs/benchmarks.md, "Memory"). So the host
runs it: `citybrain provision build` validates config.json and writes beside it `config.checked`:

    <sha256 hex> <edge VERSION>\\n
    <the validated config as JSON: every default filled in, Modbus read plans compiled>

the sha256 taken over config.json's bytes followed by the bytes after the first line. At boot
`load(path)` hashes both files; when the hash and the version match, the board runs that config
after the facts only it can check (a board's serial ports are UART names, the TLS files are on its
flash, its max_inflight default), and edge.config is never imported.

When they do not match (config.json, or the checked file, was edited on the board after the build)
it returns a line saying so, and edge.main runs the complete validation on the board, as a
gateway without a checked file does: a hand edit is never taken unchecked.
"""

import json
import os


def name(path):
    """The checked file beside config `path`: "a-1f2e/config.json" -> "a-1f2e/config.checked"."""
    return (path[:-5] if path.endswith(".json") else path) + ".checked"


def files(cfg, path):
    """Resolve the broker's relative ca_file, certfile, keyfile against the config's folder (a
    board's image carries them beside its config); ValueError naming one that is not there."""
    b = cfg["broker"]
    for key in ("ca_file", "certfile", "keyfile"):
        f = b[key]
        if f:
            if f[0] != "/" and "/" in path:
                b[key] = f = path.rsplit("/", 1)[0] + "/" + f
            try:
                os.stat(f)
            except OSError:
                raise ValueError("config.broker.%s: %s is not on this gateway" % (key, f)) from None


def load(path):
    """The checked config for `path` (a dict), None if there is no checked file beside it, or a
    line saying why it cannot be used (then edge.main validates config.json itself)."""
    import sys
    from binascii import hexlify
    from hashlib import sha256

    from edge import VERSION
    from edge.compat import IS_MICROPYTHON

    try:
        f = open(name(path), "rb")
    except OSError:
        return None
    h = sha256()
    buf = bytearray(256)
    try:
        with open(path, "rb") as c:
            while True:
                n = c.readinto(buf)
                if not n:
                    break
                h.update(buf[:n] if n < 256 else buf)
        with f:
            head = f.readline().split()
            body = f.read()
    except OSError as exc:
        return "cannot read %s: %s" % (path, exc)
    del buf
    h.update(body)
    if len(head) != 2 or head[0] != hexlify(h.digest()):
        return "%s changed since `citybrain provision build` checked it" % path
    if head[1].decode() != VERSION:
        return "%s was checked by citybrain %s, this is %s" % (name(path), head[1].decode(), VERSION)
    cfg = json.loads(body)
    del body
    board = IS_MICROPYTHON and sys.platform not in ("linux", "darwin")
    for s in cfg["sources"]:
        if board and s["transport"] != "mqtt" and not s["port"].startswith("uart"):
            return "sources: %r is not a board UART" % s["port"]
        plans = []  # slaves with the same layout share one plan object, as edge.config made them
        for sl in s["slaves"] or ():
            for p in plans:
                if p == sl["plan"]:
                    sl["plan"] = p
                    break
            else:
                plans.append(sl["plan"])
    up = cfg["uplink"]
    if up["max_inflight"] is None:
        up["max_inflight"] = 2 if IS_MICROPYTHON else 4  # as edge.config fills it in
    try:
        files(cfg, path)
    except ValueError as exc:
        return str(exc)
    return cfg
