"""`citybrain collector dead-letters list|show|replay`: what the collector refused, and a second try.

  citybrain collector dead-letters list --config collector.toml --reason db_type_conflict --since 2h
  citybrain collector dead-letters show --config collector.toml 42
  citybrain collector dead-letters replay --config collector.toml 42 43
  citybrain collector dead-letters replay --config collector.toml --reason time_in_future --since 1d

`replay` runs each entry through the same path as live traffic, in this process, with the config
given: a refused message (or a refused reading, kept as a one-reading batch) goes through the
pipeline (decode, validate, writer) and a line the database refused goes to the writer. Fix the
cause first (the config, the database's series); an entry refused again is dead-lettered again, with
the new reason. Replaying twice stores nothing twice: a point is deterministic (same series and
timestamp), so a second write overwrites the first. An entry kept only as a prefix (its payload was
larger than storage.dead_letter_payload_max) cannot be replayed and is refused with a message. The
replay writes through a spool file of its own (`<spool_path>.replay`), never the running collector's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from collector import config as cfg
from collector.deadletter import DeadLetters, Entry

if TYPE_CHECKING:
    from collector.service import WriterLike


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dl_action", metavar="<list|show|replay>", required=True)
    list_p = sub.add_parser(
        "list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="list entries, oldest first (filters: --reason, --gateway, --since, --until)",
        description="example:\n"
        "  citybrain collector dead-letters list -c collector.toml --gateway gw-0001 --since 1h",
    )
    show_p = sub.add_parser(
        "show",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="one entry in full, its payload decoded (CBOR like `citybrain decode`, or line protocol)",
        description="example:\n  citybrain collector dead-letters show -c collector.toml 42",
    )
    replay_p = sub.add_parser(
        "replay",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run entries through validation and the writer again (by id, or every entry matching filters)",
        description="example:\n"
        "  citybrain collector dead-letters replay -c collector.toml --reason db_type_conflict",
    )
    for p in (list_p, show_p, replay_p):
        p.add_argument("--config", "-c", metavar="FILE", help="the collector's TOML config file")
        p.add_argument("--dead-letters", dest="set_dead_letters", metavar="FILE", help="the dead-letter file")
    for p in (list_p, replay_p):
        p.add_argument("--reason", help="only this reason code (e.g. db_type_conflict, bad_cbor)")
        p.add_argument("--gateway", help="only this gateway id")
        p.add_argument("--since", metavar="AGE|TIME", help="only entries newer: '2h', '7d' or an ISO time")
        p.add_argument("--until", metavar="AGE|TIME", help="only entries older: '2h', '7d' or an ISO time")
        p.add_argument("--limit", type=int, default=100, help="at most this many entries (default 100)")
    list_p.add_argument("--json", action="store_true", help="one JSON object per line")
    show_p.add_argument("id", type=int, help="entry id (from `list`)")
    show_p.add_argument("--json", action="store_true", help="JSON instead of text")
    replay_p.add_argument("ids", type=int, nargs="*", metavar="ID", help="entry ids (from `list`)")


def when_ms(text: str, key: str, now: float | None = None) -> int:
    """Milliseconds since the epoch from an age ("2h": that long ago) or an ISO 8601 time."""
    now = time.time() if now is None else now
    try:
        return int((now - cfg.parse_duration(text, key)) * 1000)
    except cfg.ConfigError:
        pass
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise cfg.ConfigError(f"{key}: expected an age like '2h' or an ISO time, got {text!r}") from None
    if dt.tzinfo is None:
        raise cfg.ConfigError(f"{key}: {text!r} needs a time zone (e.g. Z)")
    return int(dt.timestamp() * 1000)


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")


def _select(dead: DeadLetters, args: argparse.Namespace) -> list[Entry]:
    return dead.list(
        reason=args.reason,
        gateway=args.gateway,
        since_ms=when_ms(args.since, "--since") if args.since else None,
        until_ms=when_ms(args.until, "--until") if args.until else None,
        limit=args.limit,
    )


def summary(e: Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": _iso(e.at_ms),
        "reason": e.reason,
        "gateway": e.gateway,
        "topic": e.topic,
        "size": e.size,
        "sha256": e.digest,
        "truncated": e.truncated,
        "replayed_at": _iso(e.replayed_at_ms),
        "detail": e.detail,
    }


def is_line_protocol(e: Entry) -> bool:
    """Lines refused by the database (or the serializer) carry no topic: they are writer entries."""
    return not e.topic


def decoded(e: Entry) -> dict[str, Any] | str:
    """The payload for people: decoded CBOR where possible, line protocol as text, else hex."""
    if is_line_protocol(e):
        return e.payload.decode("utf-8", "replace")
    if e.truncated:
        return f"(first {len(e.payload)} of {e.size} bytes) " + e.payload[:256].hex()
    from citybrain.decode import Garbage, decode

    try:
        doc, problems, _ = decode(e.payload, e.topic or None, "raw")
    except Garbage as exc:
        return f"({exc}) " + e.payload[:256].hex()
    if problems:
        doc["problems"] = problems
    return doc


def _list(dead: DeadLetters, args: argparse.Namespace) -> int:
    entries = _select(dead, args)
    for e in entries:
        s = summary(e)
        if args.json:
            print(json.dumps(s, ensure_ascii=False))
        else:
            flags = (" TRUNCATED" if e.truncated else "") + (" replayed" if e.replayed_at_ms else "")
            print(
                f"{e.id:>8}  {s['at']}  {e.reason:<18} {e.gateway or '-':<16} {e.size:>8} B  "
                f"{e.digest[:16]}{flags}  {e.detail[:80]}"
            )
    if not args.json:
        print(f"{len(entries)} entries (of {dead.total()} stored)", file=sys.stderr)
    return 0


def _show(dead: DeadLetters, args: argparse.Namespace) -> int:
    e = dead.get(args.id)
    if e is None:
        print(f"citybrain collector dead-letters: no entry {args.id}", file=sys.stderr)
        return 1
    doc = {**summary(e), "payload": decoded(e)}
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2, default=str))
        return 0
    for k, v in doc.items():
        if k == "payload":
            continue
        print(f"{k:>12}: {v}")
    payload = doc["payload"]
    if isinstance(payload, dict):
        from citybrain.decode import render_text

        try:
            print(render_text(payload, e.size))
        except (KeyError, TypeError):  # a document render_text does not know: show it raw
            print(json.dumps(payload, ensure_ascii=False, indent=2, default=str))
    else:
        print(payload)
    return 0


async def replay(config: cfg.Config, entries: Sequence[Entry]) -> list[tuple[int, bool, str]]:
    """(id, stored, what happened) per entry, through a Pipeline and writer built from `config`."""
    from collector.ingest import Message
    from collector.metrics import Metrics
    from collector.service import Pipeline, build_writer, close_writer, open_dead_letters
    from collector.validate import load_kinds

    # A spool of its own: the running collector's spool must not change under it.
    storage = dataclasses.replace(config.storage, spool_path=config.storage.spool_path + ".replay")
    config = dataclasses.replace(config, storage=storage)
    dead = open_dead_letters(config)
    writer = build_writer(config, dead)
    kinds = load_kinds()
    out: list[tuple[int, bool, str]] = []
    await writer.start()
    try:
        for e in entries:
            if e.truncated:
                out.append(
                    (
                        e.id,
                        False,
                        f"refused: only the first {len(e.payload)} of {e.size} bytes were kept "
                        "(storage.dead_letter_payload_max); a truncated payload cannot be replayed",
                    )
                )
                continue
            before = dead.added_by_reason.copy()
            sub0, ref0 = _stat(writer, "points_submitted"), _stat(writer, "db_refused")
            if is_line_protocol(e):
                await writer.submit_lines(e.payload, e.payload.count(b"\n") + 1)
            else:
                # A pipeline per entry: two readings refused from one batch share its dedup key.
                pipeline = Pipeline(
                    config,
                    writer=writer,
                    dead_letters=dead,
                    metrics=Metrics(),
                    ack=lambda m: None,
                    kinds=kinds,
                )
                await pipeline.process(Message(e.topic, e.payload, 0, 1, False, 0))
            stored = _stat(writer, "points_submitted") - sub0 - (_stat(writer, "db_refused") - ref0)
            again = sorted(dead.added_by_reason - before)  # refused again, by this process
            if stored:
                dead.mark_replayed(e.id)
                what = f"stored {stored} line{'s' if stored != 1 else ''}"
                out.append((e.id, True, what + (f"; refused again: {', '.join(again)}" if again else "")))
            else:
                out.append((e.id, False, f"refused again: {', '.join(again) or 'nothing to write'}"))
        # The replay counts only once its lines are in the database, not in its own spool.
        await writer.close(drain=True, timeout_s=config.service.drain_timeout)
        if _stat(writer, "spool_lines"):
            out = [
                (i, False, f"{what}, but the database is not writable: NOT stored, replay again")
                if ok
                else (i, ok, what)
                for i, ok, what in out
            ]
    finally:
        await close_writer(writer, 0.0)  # releases the HTTP session and the spool file
        dead.close()
    return out


def _stat(writer: WriterLike, key: str) -> int:
    value = writer.stats.get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


def _replay(config: cfg.Config, dead: DeadLetters, args: argparse.Namespace) -> int:
    if args.ids:
        entries = []
        for i in args.ids:
            e = dead.get(i)
            if e is None:
                print(f"citybrain collector dead-letters: no entry {i}", file=sys.stderr)
                return 1
            entries.append(e)
    else:
        if not any((args.reason, args.gateway, args.since, args.until)):
            print(
                "citybrain collector dead-letters replay: give entry ids or a filter "
                "(--reason, --gateway, --since, --until)",
                file=sys.stderr,
            )
            return 2
        entries = _select(dead, args)
    dead.close()  # the replay opens the store itself (it may dead-letter again)
    results = asyncio.run(replay(config, entries))
    for i, ok, what in results:
        print(f"{i:>8}  {'ok  ' if ok else 'FAIL'}  {what}")
    return 0 if all(ok for _, ok, _ in results) else 1


def run(config: cfg.Config, args: argparse.Namespace) -> int:
    from collector.service import open_dead_letters

    dead = open_dead_letters(config)
    try:
        if args.dl_action == "list":
            return _list(dead, args)
        if args.dl_action == "show":
            return _show(dead, args)
        return _replay(config, dead, args)
    except cfg.ConfigError as exc:
        print(f"citybrain collector dead-letters: {exc}", file=sys.stderr)
        return 2
    finally:
        dead.close()
