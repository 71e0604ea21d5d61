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

# Every name a board loads with this module (function, class, argument, attribute and global
# names, strings of up to 10 characters) is interned for good when the first command arrives:
# with a 128-sensor run that can make a new qstr pool mid-run (~4.5 KB in one block; docs/gateway.md,
# "a first command"). So: module-private `const`s (not globals, their text not interned), names the
# agent has already interned, and one function where one caller would call another.
_OPS = const(("status", "set", "reboot", "flush"))
_MAX_ID_LEN = const(64)
_CMD_KEYS = const(("v", "id", "op", "args"))
_SETTINGS = const(("deadband", "max_silence_s", "poll_ms"))
_SOURCE = const("source")  # the `set` argument naming a source by index
_OK = const("ok")  # reply keys
_RESULT = const("result")
_ERROR = const("%s: %s")  # a reply's error text: code, detail

# Reply error codes for commands the gateway could not parse (docs/protocol.md).
_E_BAD_CBOR = const("bad_cbor")
_E_BAD_COMMAND = const("bad_command")
_E_UNKNOWN_OP = const("unknown_op")
_E_VERSION = const("unsupported_version")


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


def decode_command(data):
    """`Command` or `CommandError` for a `/cmd` payload; never raises on any bytes."""
    try:
        m = cbor.loads(data, 8, 256)
    except CBORError as e:
        return CommandError(_E_BAD_CBOR, str(e))
    if not isinstance(m, dict):
        return CommandError(_E_BAD_COMMAND, "the command is not a map")
    cid = m.get("id")
    if not isinstance(cid, str) or not 0 < len(cid) <= _MAX_ID_LEN:
        return CommandError(_E_BAD_COMMAND, "id must be text of 1..%d chars" % _MAX_ID_LEN)
    for k in m:
        if k not in _CMD_KEYS:
            return CommandError(_E_BAD_COMMAND, "unknown key %r" % (k,), cid)
    v = m.get("v", protocol.VERSION)
    if v != protocol.VERSION or type(v) is not int:
        return CommandError(_E_VERSION, "version %r, not %d" % (v, protocol.VERSION), cid)
    op = m.get("op")
    if not isinstance(op, str):
        return CommandError(_E_BAD_COMMAND, "op must be text", cid)
    if op not in _OPS:
        return CommandError(_E_UNKNOWN_OP, "unknown op %r" % (op,), cid)
    args = m.get("args", {})
    if not isinstance(args, dict):
        return CommandError(_E_BAD_COMMAND, "args must be a map", cid)
    for k in args:
        if not isinstance(k, str):
            return CommandError(_E_BAD_COMMAND, "args keys must be text", cid)
    return Command(cid, op, args)


def encode_reply(w, id, error=None, value=None):
    """`{id, ok, error, result}` into `w`: ok is true when `error` (text) is None, `value` the
    result; id is None when the command's id was unreadable."""
    cbor.enc_head(w, 5, 4)
    cbor.enc_text(w, "id")
    cbor.enc(w, id)
    cbor.enc_text(w, _OK)
    cbor.enc(w, error is None)
    cbor.enc_text(w, "error")
    cbor.enc(w, error)
    cbor.enc_text(w, _RESULT)
    cbor.enc(w, value)


async def handle(agent, payload):
    """Decode, run and answer one command; `status` also republishes the status, `reboot` reboots."""
    cmd = decode_command(payload)
    w = bytearray()
    bad = isinstance(cmd, CommandError)
    if bad:
        encode_reply(w, cmd.id, _ERROR % (cmd.code, cmd.detail))
    else:
        try:
            encode_reply(w, cmd.id, None, run(agent, cmd))
        except (ValueError, KeyError, TypeError) as exc:
            encode_reply(w, cmd.id, "bad_args: %s" % exc)
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
        agent.events.close()
        agent.port.reboot()


def run(agent, cmd):
    """The result map of a decoded command; ValueError (-> `bad_args`) if its args are wrong."""
    op = cmd.op
    args = cmd.args
    if op == "status":
        log = agent.log.stats()
        log["unstampable"] = agent.batcher.unstampable
        log["events"] = agent.events.stats()  # the events and alarms log (docs/store.md, "Two logs")
        return {"errors": agent.status(), "log": log, "alarms_sent": agent.alarms_sent,
                "alarms_dropped": agent.alarms_dropped, "alarms_unstamped": agent.alarms_unstamped,
                "connects": agent.connects}
    if op == "flush":
        return {"pending": agent.request_flush()}
    if op == "reboot":
        return {"boot": agent.boot}
    if op != "set":
        raise ValueError("unhandled op %r" % op)
    # set: the sources it names, by index or kind
    sources = agent.sources
    if _SOURCE in args:
        i = args[_SOURCE]
        if not isinstance(i, int) or not 0 <= i < len(sources):
            raise ValueError("source must be an index 0..%d" % (len(sources) - 1))
        targets = [sources[i]]
    elif "kind" in args:
        targets = [s for s in sources if s.kind == args["kind"]]
        if not targets:
            raise ValueError("no source of kind %r" % (args["kind"],))
    else:
        raise ValueError("say which sources: 'kind' or 'source'")
    n = 0
    for k in args:
        if k != "kind" and k != _SOURCE:
            if k not in _SETTINGS:
                raise ValueError("unknown setting %r" % k)
            n += 1
    if not n:
        raise ValueError("nothing to set (deadband, max_silence_s, poll_ms)")
    db = args.get("deadband")
    silence = args.get("max_silence_s")
    poll = args.get("poll_ms")
    # Every value and every targeted source is checked before any is changed, so a refused `set`
    # leaves no half of itself behind (a text deadband would otherwise crash a source's task later).
    if db is None:
        db = {}
    elif not isinstance(db, dict):
        raise ValueError("deadband must be a map of field -> number")
    if silence is not None and (isinstance(silence, bool) or not isinstance(silence, int)
                                or silence < 0):
        raise ValueError("max_silence_s must be an integer >= 0, not %r" % (silence,))
    if poll is not None and (isinstance(poll, bool) or not isinstance(poll, int)):
        raise ValueError("poll_ms must be an integer, not %r" % (poll,))
    for src in targets:
        for name in db:
            src.filter.check_deadband(name, db[name])
        if poll is not None:
            src.check_poll(poll)
    for src in targets:
        for name in db:
            src.filter.set_deadband(name, db[name])
        if silence is not None:
            src.filter.max_silence_ms = silence * 1000
        if poll is not None:
            src.set_poll(poll)
    return {"sources": len(targets)}
