"""Provision gateways: identity and credentials, broker auth files, configs, firmware images.

A field tech's day, in order:
  citybrain provision init --dir fleet --broker-host mqtt.city.example --broker-port 8883 --tls
  citybrain provision add-gateway --dir fleet --id gw-xihu-0001 --site 文三路 --district 西湖区 \\
      --sources sources.json
  citybrain provision render --dir fleet --out fleet/out     # gateway configs, Mosquitto passwd + ACL
  citybrain provision build --config fleet/out/gateways/gw-xihu-0001/config.json --out build/gw-xihu-0001
  citybrain provision flash --port /dev/ttyUSB0 build/gw-xihu-0001

`--sources` is a JSON list of source blocks as documented in docs/gateway-config.md; each device
kind's README shows one (devices/<kind>/sample.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from provisioning.flash import Progress
from provisioning.fleet import Fleet, FleetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    p = sub.add_parser("init", help="create a fleet registry (fleet.json)")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory (created)")
    p.add_argument("--broker-host", required=True, help="central broker host name")
    p.add_argument("--broker-port", type=int, default=None, help="default 1883, or 8883 with --tls")
    p.add_argument("--tls", action="store_true", help="gateways connect with TLS")
    p.add_argument("--ca-file", help="with --tls: the CA certificate path on the gateway (PEM)")
    p.add_argument("--prefix", default="city", help="topic prefix (default: city)")

    p = sub.add_parser("add-gateway", help="register a gateway and issue its credentials")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id, e.g. gw-xihu-0001 (letters, digits, - _ .)")
    p.add_argument("--site", default="", help="site name, becomes the `site` tag")
    p.add_argument("--district", default="", help="district, becomes the `district` tag")
    p.add_argument("--sources", type=Path, help="JSON file with the list of source blocks")

    p = sub.add_parser("rotate-password", help="issue new credentials for a gateway")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id")

    p = sub.add_parser("render", help="write gateway configs and the broker's passwd/ACL files")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--out", type=Path, help="output directory (default: <dir>/out)")
    p.add_argument("--service-user", action="append", default=[], metavar="USER=PASSWORD",
                   help="collector/operator broker accounts (repeatable); PASSWORD may be @ENVVAR")

    p = sub.add_parser("build", help="compile a board image (.mpy) for one gateway config",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BUILD_EXAMPLE)
    p.add_argument("--config", required=True, type=Path, help="the gateway's config.json")
    p.add_argument("--out", required=True, type=Path, help="image directory (replaced)")
    p.add_argument("--ca-file", type=Path, default=None,
                   help="with TLS: the broker's CA (.pem) on this laptop, put into the image as ca.pem "
                        "(default: the config's broker.ca_file, looked up beside the config)")

    p = sub.add_parser("firmware", help="blank board: erase it and install the pinned MicroPython (esptool)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FIRMWARE_EXAMPLE)
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--firmware", required=True, type=Path,
                   help="the MicroPython .bin for the board (micropython.org/download/ESP32_GENERIC)")
    p.add_argument("--chip", default="esp32", help="esp32 (default), esp32s3 or esp32c3")
    p.add_argument("--baud", type=int, default=460800,
                   help="write speed (default 460800; 115200 if it fails)")
    p.add_argument("--esptool", default=None,
                   help="the esptool program (default: next to this Python, or PATH)")
    p.add_argument("--allow-version", action="store_true",
                   help="install a MicroPython other than the pinned one")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file and print the esptool commands only")

    p = sub.add_parser("flash", help="copy an image onto a board: staged, verified, switched over last",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FLASH_EXAMPLE)
    p.add_argument("image", type=Path, help="directory made by `build`")
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--resume", action="store_true",
                   help="do not soft-reset first (the MicroPython unix port on a pty: a reset ends it)")
    p.add_argument("--reassign", action="store_true",
                   help="the board is another gateway's: make it this image's gateway, wiping its spool "
                        "and state (boot counter)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-self-test", action="store_true",
                   help="do not reset the board and check its boot line afterwards")
    p.add_argument("--check-broker", metavar="USER=PASSWORD", default=None,
                   help="self-test: also wait for the gateway's retained online status on its broker, "
                        "with this service account (PASSWORD may be @ENVVAR; never the gateway's own)")


BUILD_EXAMPLE = """example:
  citybrain provision build --config fleet/out/gateways/gw-xihu-0001/config.json \\
      --out build/gw-xihu-0001 --ca-file fleet/pki/ca.pem
"""

FLASH_EXAMPLE = """example:
  citybrain provision flash --port /dev/ttyUSB0 build/gw-xihu-0001 --check-broker operator=@OPERATOR_PW
  citybrain provision flash --port /dev/ttyUSB0 --reassign build/gw-xihu-0002   # board was gw-xihu-0001

exit status: 0 flashed and self-test passed, 1 not flashed (the message says what the board boots),
3 flashed but the self-test failed (the message says what failed)
"""


def _progress_bar(stream: TextIO) -> Callable[[Progress], None]:
    """A one-line bar on `stream` (bytes and files), redrawn in place; phases on lines of their own."""
    last = [""]
    drawn = [0.0]

    def show(p: Progress) -> None:
        if p.phase == "copy":
            now = time.monotonic()
            if now - drawn[0] < 0.1 and p.done_files < p.total_files:
                return  # a redraw every 100 ms is enough for the eye and for a log file
            drawn[0] = now
            width = 30
            filled = width * p.done_bytes // max(p.total_bytes, 1)
            stream.write(f"\r  copy   [{'#' * filled}{'.' * (width - filled)}] "
                         f"{p.done_bytes / 1024:6.1f}/{p.total_bytes / 1024:.1f} KB  "
                         f"{p.done_files}/{p.total_files} files")
        elif p.phase != last[0]:
            if last[0] == "copy":
                stream.write("\n")
            words = {"survey": "reading the board", "verify": "verifying sha256 of every file on the board",
                     "switch": "switching over to the new image", "clean": "removing the old image",
                     "done": "flashed"}
            stream.write(f"  {words.get(p.phase, p.phase)} {p.detail}\n")
        last[0] = p.phase
        stream.flush()

    return show


FIRMWARE_EXAMPLE = """example:
  citybrain provision firmware --port /dev/ttyUSB0 --firmware ESP32_GENERIC-20260829-v1.29.0.bin
  citybrain provision firmware --port /dev/ttyUSB0 --firmware fw.bin --dry-run   # print the esptool lines
"""


def _self_test(args: argparse.Namespace, image: str, gateway_id: str) -> int:
    from provisioning.selftest import selftest

    manifest = json.loads((args.image / "manifest.json").read_text())
    cfg = json.loads((args.image / "config.json").read_text())
    account = None
    if args.check_broker:
        ((user, password),) = _service_users([args.check_broker]).items()
        account = (user, password)
    broker = cfg["broker"]
    ca = args.image / broker["ca_file"] if broker.get("tls") and broker.get("ca_file") else None
    print(f"self-test: resetting the board on {args.port} and reading its console ...", flush=True)
    verdict = selftest(args.port, gateway_id=gateway_id, image=image, fw=str(manifest["fw"]), broker=broker,
                       account=account, prefix=str(cfg.get("prefix") or "city"),
                       tls_ca=str(ca) if ca else None)
    print(verdict.text())
    return 0 if verdict.ok else 3


def _service_users(specs: list[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for spec in specs:
        user, sep, password = spec.partition("=")
        if not sep or not user or not password:
            raise FleetError(f"--service-user {spec!r}: expected USER=PASSWORD or USER=@ENVVAR")
        if password.startswith("@"):
            value = os.environ.get(password[1:])
            if value is None:
                raise FleetError(f"--service-user {user}: environment variable {password[1:]} is not set")
            password = value
        users[user] = password
    return users


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "init":
        port = args.broker_port or (8883 if args.tls else 1883)
        if args.ca_file and not args.tls:
            raise FleetError("--ca-file only makes sense with --tls")
        fleet = Fleet.create(args.dir, broker_host=args.broker_host, broker_port=port, tls=args.tls,
                             prefix=args.prefix)
        if args.ca_file:
            fleet.broker["ca_file"] = args.ca_file
            fleet.save()
        print(f"created {fleet.path}")
        return 0
    if args.action == "add-gateway":
        fleet = Fleet.load(args.dir)
        sources = []
        if args.sources:
            try:
                sources = json.loads(args.sources.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise FleetError(f"--sources {args.sources}: {exc}") from None
            if not isinstance(sources, list):
                raise FleetError(f"--sources {args.sources}: expected a JSON list of source blocks")
        fleet.add_gateway(args.id, site=args.site, district=args.district, sources=sources)
        fleet.save()
        print(f"added {args.id}; password in {fleet.secrets_dir / (args.id + '.password')} (mode 0600)")
        return 0
    if args.action == "rotate-password":
        fleet = Fleet.load(args.dir)
        fleet.rotate_password(args.id)
        fleet.save()
        print(f"new password for {args.id}; re-run `render` and reload the broker")
        return 0
    if args.action == "render":
        from provisioning.render import render

        fleet = Fleet.load(args.dir)
        out = args.out or (args.dir / "out")
        for path in render(fleet, out, service_users=_service_users(args.service_user)):
            print(f"wrote {path}")
        return 0
    if args.action == "build":
        from provisioning.firmware import build

        size = build(args.config, args.out, ca_file=args.ca_file)
        print(f"image {args.out}: {size} bytes")
        return 0
    if args.action == "firmware":
        from provisioning.bringup import install

        cmds = install(args.port, args.firmware, chip=args.chip, baud=args.baud, esptool=args.esptool,
                       allow_version=args.allow_version, dry_run=args.dry_run)
        if args.dry_run:
            print("\n".join(" ".join(c) for c in cmds))
        else:
            print(f"MicroPython is on the board on {args.port}; next: citybrain provision flash "
                  f"--port {args.port} <image>")
        return 0
    if args.action == "flash":
        from provisioning.flash import flash

        print(f"flashing {args.image} to {args.port}")
        res = flash(args.image, args.port, resume=args.resume, reassign=args.reassign,
                    progress=None if args.quiet else _progress_bar(sys.stdout))
        if res.wiped:
            was = res.old.gateway_id or "of no known gateway"
            print(f"reassigned: the board was {was}; wiped its {', '.join(res.wiped)}")
        print(f"done: the board boots image {res.image} ({res.gateway_id}), {res.bytes} bytes verified "
              f"in {res.seconds:.1f} s")
        if args.no_self_test:
            return 0
        return _self_test(args, res.image, res.gateway_id)
    raise AssertionError(args.action)
