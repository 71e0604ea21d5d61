"""Commands on `<prefix>/<gw>/cmd` and their replies (docs/protocol.md), and how the agent runs them.

A module of its own, imported by the agent when the first command arrives: operators send a handful,
so a board does not carry this code (nor the CBOR decoder) in its heap from boot. `decode_command`
returns a `Command` or a `CommandError` (never raises), so the agent can always answer with a reply
naming the error.
"""

import asyncio

from edge import cbor, protocol
from edge.cbor import CBORError
from edge.compat import const
from edge.mqtt.errors import MQTTError

OPS = ("status", "set", "reboot", "flush")
MAX_ID_LEN = const(64)

# Reply error codes for commands the gateway could not parse.
E_BAD_CBOR = "bad_cbor"
E_BAD_COMMAND = "bad_command"
E_UNKNOWN_OP = "unknown_op"
E_VERSION = "unsupported_version"

_SETTINGS = ("deadband", "max_silence_s", "poll_ms")


class Command:
    __slots__ = ("id", "op", "args")

    def __init__(self, id, op, args):
        self.id = id
        self.op = op
        self.args = args

    def __repr__(self):
        return "Command(%r, %r, %r)" % (self.id, self.op, self.args)


class CommandError:
    """Why a command was rejected: `code` is the reply's error text, `id` the command id if known."""

    __slots__ = ("code", "detail", "id")

    def __init__(self, code, detail, id=None):
        self.code = code
        self.detail = detail
        self.id = id

    def __repr__(self):
        return "CommandError(%r, %r, %r)" % (self.code, self.detail, self.id)


_CMD_KEYS = ("v", "id", "op", "args")


def decode_command(data):
    """`Command` or `CommandError` for a `/cmd` payload; never raises on any bytes."""
    try:
        m = cbor.loads(data, 8, 256)
    except CBORError as e:
        return CommandError(E_BAD_CBOR, str(e))
    if not isinstance(m, dict):
        return CommandError(E_BAD_COMMAND, "not a map")
    cid = m.get("id")
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_ID_LEN:
        return CommandError(E_BAD_COMMAND, "id must be text of 1..%d chars" % MAX_ID_LEN)
    for k in m:
        if k not in _CMD_KEYS:
            return CommandError(E_BAD_COMMAND, "unknown key %r" % (k,), cid)
    v = m.get("v", protocol.VERSION)
    if v != protocol.VERSION or type(v) is not int:
        return CommandError(E_VERSION, "version %r" % (v,), cid)
    op = m.get("op")
    if not isinstance(op, str):
        return CommandError(E_BAD_COMMAND, "op must be text", cid)
    if op not in OPS:
        return CommandError(E_UNKNOWN_OP, "unknown op %r" % (op,), cid)
    args = m.get("args", {})
    if not isinstance(args, dict):
        return CommandError(E_BAD_COMMAND, "args must be a map", cid)
    for k in args:
        if not isinstance(k, str):
            return CommandError(E_BAD_COMMAND, "args keys must be text", cid)
    return Command(cid, op, args)



def encode_reply(w, cmd_id, ok, error=None, result=None):
    """`{id, ok, error, result}` into `w`; id is None when the command's id was unreadable."""
    cbor.enc_head(w, 5, 4)
    cbor.enc_text(w, "id")
    cbor.enc(w, cmd_id)
    cbor.enc_text(w, "ok")
    cbor.enc(w, bool(ok))
    cbor.enc_text(w, "error")
    cbor.enc(w, error)
    cbor.enc_text(w, "result")
    cbor.enc(w, result)


async def handle(agent, payload):
    """Decode, run and answer one command; `status` also republishes the status, `reboot` reboots."""
    cmd = decode_command(payload)
    w = bytearray()
    bad = isinstance(cmd, CommandError)
    if bad:
        encode_reply(w, cmd.id, False, cmd.code + ": " + cmd.detail)
    else:
        try:
            result = run(agent, cmd)
            encode_reply(w, cmd.id, True, None, result)
        except (ValueError, KeyError, TypeError) as exc:
            encode_reply(w, cmd.id, False, "bad_args: %s" % exc)
    client = agent.client
    pid = await client.publish(agent.topics[protocol.REPLY], bytes(w), 1, False, False)
    if not bad and cmd.op == "status":
        await agent.publish_status()
    if not bad and cmd.op == "reboot":
        # The reply must reach the broker first: a board's reset does not flush its socket.
        try:
            await asyncio.wait_for(client.wait_ack(pid), 5)
        except (MQTTError, asyncio.TimeoutError):
            pass  # reboot anyway: the operator asked, and sees the new boot in the status
        agent.log.close()
        agent.port.reboot()


def run(agent, cmd):
    """The result map of a decoded command; ValueError (-> `bad_args`) if its args are wrong."""
    op = cmd.op
    args = cmd.args
    if op == "status":
        log = agent.log.stats()
        log["unstampable"] = agent.batcher.unstampable
        return {"errors": agent.status(), "log": log, "alarms_sent": agent.alarms_sent,
                "alarms_dropped": agent.alarms_dropped, "alarms_unstamped": agent.alarms_unstamped,
                "connects": agent.connects}
    if op == "set":
        targets = _targets(agent, args)
        rest = {}
        for k in args:
            if k not in ("kind", "source"):
                rest[k] = args[k]
        if not rest:
            raise ValueError("nothing to set (deadband, max_silence_s, poll_ms)")
        for k in rest:
            if k not in _SETTINGS:
                raise ValueError("unknown setting %r" % k)
        for src in targets:
            check_settings(src, rest)  # all of them first: a refusal changes nothing
        for src in targets:
            apply(src, rest)
        return {"sources": len(targets)}
    if op == "flush":
        return {"pending": agent.request_flush()}
    if op == "reboot":
        return {"boot": agent.boot}
    raise ValueError("unhandled op %r" % op)


def _targets(agent, args):
    sources = agent.sources
    if "source" in args:
        i = args["source"]
        if not isinstance(i, int) or not 0 <= i < len(sources):
            raise ValueError("source must be an index 0..%d" % (len(sources) - 1))
        return [sources[i]]
    if "kind" in args:
        found = [s for s in sources if s.kind == args["kind"]]
        if not found:
            raise ValueError("no source of kind %r" % (args["kind"],))
        return found
    raise ValueError("say which sources: 'kind' or 'source'")


def check_settings(src, args):
    """Raise ValueError (naming the key) unless `apply(src, args)` would take every setting.

    The agent checks every targeted source before it changes any, so a refused `set` leaves no
    half of itself behind; a text deadband would otherwise crash the source's task later.
    """
    db = args.get("deadband")
    if db is not None:
        if not isinstance(db, dict):
            raise ValueError("deadband must be a map of field -> number")
        for name in db:
            src.filter.check_deadband(name, db[name])
    silence = args.get("max_silence_s")
    if silence is not None and (isinstance(silence, bool) or not isinstance(silence, int)
                                or silence < 0):
        raise ValueError("max_silence_s must be an integer >= 0, not %r" % (silence,))
    poll = args.get("poll_ms")
    if poll is not None:
        if isinstance(poll, bool) or not isinstance(poll, int):
            raise ValueError("poll_ms must be an integer, not %r" % (poll,))
        src.check_poll(poll)


def apply(src, args):
    """The `set` command for one source: deadbands, max silence, poll interval."""
    check_settings(src, args)
    db = args.get("deadband")
    silence = args.get("max_silence_s")
    poll = args.get("poll_ms")
    if db is not None:
        for name in db:
            src.filter.set_deadband(name, db[name])
    if silence is not None:
        src.filter.max_silence_ms = silence * 1000
    if poll is not None:
        src.set_poll(poll)
