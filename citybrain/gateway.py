"""Run the gateway agent on a Linux gateway (CPython), or check its config.

  citybrain gateway run --config /etc/citybrain/gateway.json
  citybrain gateway check-config --config gateway.json
  citybrain gateway ports          which serial adapters are plugged in (for the config's "port")

The config is the JSON that `citybrain provision render` writes (reference: docs/gateway-config.md).
SIGTERM and SIGINT stop the agent cleanly: the log is synced, the retained status set to offline
and the broker connection closed with DISCONNECT.
Exit codes: 0 stopped, 2 config error, 70 a task crashed, 75 reboot requested by a command
(systemd restarts it after 70 and 75).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    sub.add_parser("ports", help="list serial ports (USB RS-485 adapters) with their stable by-id paths")
    for name, help_text in (
        ("run", "run the agent until SIGTERM"),
        ("check-config", "validate a config and print it with defaults filled in"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="gateway config JSON (from `citybrain provision`)")
        if name == "run":
            p.add_argument("--quiet", action="store_true", help="do not log connection events")


def list_ports() -> list[tuple[str, str, str]]:
    """(stable path, device, description) per serial adapter; by-id paths survive re-plugging."""
    from pathlib import Path

    from serial.tools import list_ports as lp

    by_id = {}
    id_dir = Path("/dev/serial/by-id")
    if id_dir.is_dir():
        by_id = {str(p.resolve()): str(p) for p in id_dir.iterdir()}
    return [(by_id.get(p.device, p.device), p.device, p.description or "") for p in lp.comports()]


def run(args: argparse.Namespace) -> int:
    from edge import config

    if args.action == "ports":
        ports = list_ports()
        if not ports:
            print("no serial ports found (is the USB RS-485 adapter plugged in? `dmesg | tail`)")
            return 1
        for stable, device, description in ports:
            print(f"{stable}\t{device}\t{description}")
        return 0

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    if args.action == "check-config":
        shown = json.loads(json.dumps(cfg))
        for section in ("broker", "site_broker"):
            if shown.get(section) and shown[section].get("password"):
                shown[section]["password"] = "***"
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    return asyncio.run(_run(cfg, quiet=args.quiet))


async def _run(cfg: dict[str, object], *, quiet: bool) -> int:
    from edge.agent import Agent, AgentCrashed
    from edge.ports.posix import PosixPort

    try:
        agent = Agent(cfg, PosixPort(verbose=not quiet))
    except (OSError, ValueError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    except AgentCrashed as exc:
        print(f"agent crashed: {exc}", file=sys.stderr)
        return 70  # EX_SOFTWARE: systemd's Restart=always starts a fresh agent
    return 0
