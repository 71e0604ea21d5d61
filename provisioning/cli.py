"""Provision gateways: identity and credentials, broker auth files, configs, firmware images.

A field tech's day, in order:
  citybrain provision init --dir fleet --broker-host mqtt.city.example --tls --ca-file ca.pem
  citybrain provision add-service-user --dir fleet --name collector-1 --role collector
  citybrain provision add-gateway --dir fleet --id gw-xihu-0001 --site 文三路 --district 西湖区 \\
      --sources sources.json
  citybrain provision render --dir fleet      # gateway configs, Mosquitto passwd + ACL + listener
  citybrain provision build --config fleet/out/gateways/gw-xihu-0001/config.json --out build/gw-xihu-0001
  citybrain provision flash --port /dev/ttyUSB0 build/gw-xihu-0001

The fleet's life: edit-gateway, remove-gateway, rotate-password, set-broker, add-service-user,
remove-service-user, list, show; tls-init makes a fleet CA and the broker's certificate.
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
from typing import Any, TextIO

from provisioning.files import write_atomic
from provisioning.flash import Progress
from provisioning.fleet import ROLES, Fleet, FleetError, read_ca, tls_warning


def _action(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
            *examples: str, note: str = "") -> argparse.ArgumentParser:
    """A sub-command whose --help ends with real examples (and `note`, e.g. its exit statuses)."""
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
        f"  citybrain provision {name} {e}" for e in examples) + ("\n\n" + note if note else "")
    return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-file", type=Path, metavar="PEM",
                   help="with TLS: the CA certificate that signed the broker's (copied into the fleet and"
                        " shipped beside every gateway config)")
    p.add_argument("--ca-path", metavar="PATH",
                   help="where the gateway finds that CA file "
                        "(default: ca.pem, beside config.json on a board)")
    p.add_argument("--listen", metavar="ADDR",
                   help="broker side: address of the gateway listener (default 0.0.0.0)")
    p.add_argument("--conf-dir", metavar="DIR",
                   help="broker side: folder of passwd/acl on the broker host"
                        " (default /etc/mosquitto/citybrain)")


def _site_broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site-broker", metavar="HOST[:PORT]",
                   help="the local broker MQTT sensors (manhole lids) publish to; needed by transport mqtt")
    p.add_argument("--site-broker-user", metavar="USER", help="username on the site broker")
    p.add_argument("--site-broker-password-env", metavar="VAR",
                   help="environment variable holding the site broker password (kept in secrets/)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    p = _action(sub, "init", "create a fleet registry (fleet.json, secrets/, .gitignore)",
                "--dir fleet --broker-host mqtt.city.example --tls --ca-file ca.pem",
                "--dir fleet --broker-host 192.168.10.2 --broker-port 1883")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory (created)")
    p.add_argument("--broker-host", required=True, help="central broker host name")
    p.add_argument("--broker-port", type=int, default=None, help="default 1883, or 8883 with --tls")
    p.add_argument("--tls", action="store_true", help="gateways connect with TLS")
    p.add_argument("--prefix", default="city", help="topic prefix (default: city)")
    _broker_options(p)

    p = _action(sub, "set-broker", "change the broker settings of the fleet, or of one gateway",
                "--dir fleet --port 8884 --ca-file new-ca.pem",
                "--dir fleet --id gw-xihu-0001 --host 10.20.0.5      # this gateway only; credentials kept",
                "--dir fleet --id gw-xihu-0001 --reset               # back to the fleet's broker")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", help="one gateway only (host, port, tls, keepalive; never its credentials)")
    p.add_argument("--host", help="broker host name or address")
    p.add_argument("--port", type=int, help="broker port")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None, help="connect with TLS")
    p.add_argument("--keepalive-s", type=int, help="MQTT keepalive in seconds")
    p.add_argument("--no-ca-file", action="store_true", help="forget the CA file")
    p.add_argument("--reset", action="store_true", help="with --id: drop the gateway's own broker settings")
    _broker_options(p)

    p = _action(sub, "tls-init", "the fleet's TLS kit: its own CA (EC P-256) and the broker's certificate",
                "--dir fleet --name mqtt.city.example --name 10.20.0.2",
                "--dir fleet --name mqtt.city.example --keep-ca     # a new broker certificate, same CA")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--name", action="append", default=[],
                   help="a host name or address gateways dial (repeatable; default: the fleet's broker host)")
    p.add_argument("--keep-ca", action="store_true",
                   help="keep the fleet's CA and issue only a new broker certificate"
                        " (gateways need no reflash)")
    p.add_argument("--days", type=int, default=825, help="broker certificate lifetime (default 825)")

    p = _action(sub, "tls-client",
                "issue TLS client certificates of the fleet CA to gateways and service accounts",
                "--dir fleet --all                      # every gateway and service account without one",
                "--dir fleet --name gw-xihu-0001        # a new one for this gateway (render, build, flash)",
                "--dir fleet --all --require            # and make the broker require them (render, restart)")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--name", action="append", default=[],
                   help="a gateway id or service account (repeatable); its certificate is replaced")
    p.add_argument("--all", action="store_true",
                   help="every gateway and service account without a certificate of the fleet's current"
                        " CA (none yet, or one of a CA that tls-init replaced)")
    p.add_argument("--require", action=argparse.BooleanOptionalAction, default=None,
                   help="the gateway listener requires a client certificate and takes its name as the"
                        " username (require_certificate, use_identity_as_username)")
    p.add_argument("--days", type=int, default=825, help="certificate lifetime (default 825)")

    p = _action(sub, "add-gateway",
                "register a gateway and issue its credentials (its config is checked now)",
                "--dir fleet --id gw-xihu-0001 --site 文三路 --district 西湖区 --sources sources.json",
                "--dir fleet --id gw-binjiang-0002 --sources lids.json --site-broker 192.168.4.1:1883")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id, e.g. gw-xihu-0001 (letters, digits, - _)")
    p.add_argument("--site", default="", help="site name, becomes the `site` tag")
    p.add_argument("--district", default="", help="district, becomes the `district` tag")
    p.add_argument("--sources", type=Path, help="JSON file with the list of source blocks")
    p.add_argument("--options", type=Path, metavar="FILE",
                   help="JSON object of other config keys (store, uplink, trust_os_clock, ntp_host)")
    _site_broker_options(p)

    p = _action(sub, "edit-gateway", "change a gateway's site, sources or options (checked before saving)",
                "--dir fleet --id gw-xihu-0001 --sources sources.json",
                "--dir fleet --id gw-xihu-0001 --site 文二路 --options options.json")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id")
    p.add_argument("--site", help="new site name")
    p.add_argument("--district", help="new district")
    p.add_argument("--sources", type=Path, help="JSON file with the new list of source blocks")
    p.add_argument("--options", type=Path, metavar="FILE", help="JSON object of other config keys (replaces)")
    _site_broker_options(p)
    p.add_argument("--no-site-broker", action="store_true", help="drop the site broker")

    p = _action(sub, "remove-gateway",
                "revoke a gateway: registry and secret now, broker files at the next render",
                "--dir fleet --id gw-xihu-0001")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id")

    p = _action(sub, "rotate-password", "issue new credentials for a gateway or a service account",
                "--dir fleet --id gw-xihu-0001", "--dir fleet --user collector-1")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--id", help="gateway id")
    who.add_argument("--user", help="service account name")
    p.add_argument("--password-env", metavar="VAR", help="with --user: take the password from this variable")

    p = _action(sub, "add-service-user", "a broker account for a service, with an explicit role",
                "--dir fleet --name collector-1 --role collector",
                "--dir fleet --name ops --role operator --password-env OPS_PW")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--name", required=True, help="account name (a collector instance needs its own)")
    p.add_argument("--role", required=True, choices=sorted(ROLES), help="what the account may do")
    p.add_argument("--password-env", metavar="VAR",
                   help="take the password from this variable (default: a random one in secrets/service/)")

    p = _action(sub, "remove-service-user",
                "delete a service account (gone from passwd/ACL at the next render)",
                "--dir fleet --name collector-2")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--name", required=True, help="account name")

    p = _action(sub, "list", "the fleet's broker, service accounts and gateways", "--dir fleet")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")

    p = _action(sub, "show", "one gateway's config as it will be rendered (password hidden)",
                "--dir fleet --id gw-xihu-0001")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--id", required=True, help="gateway id")

    p = _action(sub, "render", "write gateway configs and the broker's passwd/ACL/listener files",
                "--dir fleet", "--dir fleet --out /srv/citybrain/out")
    p.add_argument("--dir", required=True, type=Path, help="fleet directory")
    p.add_argument("--out", type=Path, help="output directory (default: <dir>/out)")

    p = _action(sub, "build", "compile a board image (.mpy) for one gateway config",
                "--config fleet/out/gateways/gw-xihu-0001/config.json --out build/gw-xihu-0001",
                "--config fleet/out/gateways/gw-xihu-0001/config.json --out build/gw-xihu-0001 "
                "--ca-file fleet/ca.pem")
    p.add_argument("--config", required=True, type=Path, help="the gateway's config.json")
    p.add_argument("--out", required=True, type=Path, help="image directory (replaced)")
    p.add_argument("--ca-file", type=Path, default=None,
                   help="with TLS: the broker's CA (.pem) on this laptop, put into the image as ca.pem "
                        "(default: the config's broker.ca_file, looked up beside the config)")

    p = _action(sub, "firmware", "blank board: erase it and install the pinned MicroPython (esptool)",
                "--port /dev/ttyUSB0 --firmware ESP32_GENERIC-20260829-v1.29.0.bin",
                "--port /dev/ttyUSB0 --firmware fw.bin --dry-run   # print the esptool lines")
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

    p = _action(sub, "flash", "copy an image onto a board: staged, verified, switched over last",
                "--port /dev/ttyUSB0 build/gw-xihu-0001 --check-broker field-check=@CHECK_PW",
                "--port /dev/ttyUSB0 build/gw-xihu-0001 --check-broker field-check=@CHECK_PW"
                " --check-cert fleet/tls/clients/field-check.crt fleet/secrets/tls/clients/field-check.key",
                "--port /dev/ttyUSB0 --reassign build/gw-xihu-0002   # board was gw-xihu-0001",
                note="exit status: 0 flashed and self-test passed, 1 not flashed (the message says what the "
                     "board boots),\n3 flashed but the self-test failed (the message says what failed)")
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
                        "with this service account (PASSWORD may be @ENVVAR). Give the check an account "
                        "of its own (add-service-user --name field-check --role operator): the broker "
                        "binds client ids to usernames, so a check with the collector's or an operator "
                        "tool's account replaces that service's session while it runs")
    p.add_argument("--check-cert", nargs=2, metavar=("CERT", "KEY"), type=Path, default=None,
                   help="with --check-broker, on a broker that requires client certificates: the service"
                        " account's certificate and key (tls-client), e.g. fleet/tls/clients/field-check.crt"
                        " fleet/secrets/tls/clients/field-check.key")





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




def _self_test(args: argparse.Namespace, image: str, gateway_id: str) -> int:
    from provisioning.selftest import selftest

    manifest = json.loads((args.image / "manifest.json").read_text())
    cfg = json.loads((args.image / "config.json").read_text())
    account = None
    if args.check_broker:
        account = _account(args.check_broker)
    if args.check_cert and not account:
        raise FleetError("--check-cert goes with --check-broker USER=@ENVVAR (the service account it is for)")
    cert = (str(args.check_cert[0]), str(args.check_cert[1])) if args.check_cert else None
    broker = cfg["broker"]
    ca = args.image / broker["ca_file"] if broker.get("tls") and broker.get("ca_file") else None
    print(f"self-test: resetting the board on {args.port} and reading its console ...", flush=True)
    verdict = selftest(args.port, gateway_id=gateway_id, image=image, fw=str(manifest["fw"]), broker=broker,
                       account=account, prefix=str(cfg.get("prefix") or "city"),
                       tls_ca=str(ca) if ca else None, tls_cert=cert)
    print(verdict.text())
    return 0 if verdict.ok else 3


def _env(var: str, flag: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise FleetError(f"{flag} {var}: environment variable {var} is not set (or empty)")
    return value


def _account(spec: str) -> tuple[str, str]:
    """`--check-broker USER=PASSWORD` or `USER=@ENVVAR` -> (user, password)."""
    user, sep, password = spec.partition("=")
    if not sep or not user or not password:
        raise FleetError(f"--check-broker {spec!r}: expected USER=PASSWORD or USER=@ENVVAR")
    return user, _env(password[1:], "--check-broker") if password.startswith("@") else password


def _read_json(path: Path, kind: type, flag: str) -> Any:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FleetError(f"{flag} {path}: {exc}") from None
    if not isinstance(value, kind):
        raise FleetError(f"{flag} {path}: expected a JSON {'list' if kind is list else 'object'}")
    return value


def _site_broker(args: argparse.Namespace, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if getattr(args, "no_site_broker", False):
        return None
    if not args.site_broker:
        if args.site_broker_user or args.site_broker_password_env:
            if current is None:
                raise FleetError("--site-broker-user/--site-broker-password-env need"
                                 " --site-broker HOST[:PORT]")
            return dict(current, **({"username": args.site_broker_user} if args.site_broker_user else {}))
        return current
    host, sep, port = args.site_broker.rpartition(":")
    if not sep:
        host, port = args.site_broker, "1883"
    if not host or not port.isdigit():
        raise FleetError(f"--site-broker {args.site_broker!r}: expected HOST or HOST:PORT")
    sb: dict[str, Any] = {"host": host, "port": int(port)}
    if args.site_broker_user:
        sb["username"] = args.site_broker_user
    elif current and current.get("username"):
        sb["username"] = current["username"]  # a new address keeps the login (its password is kept too)
    return sb


def _set_broker_server(fleet: Fleet, args: argparse.Namespace) -> None:
    if args.listen:
        fleet.broker_server["listen"] = args.listen
    if args.conf_dir:
        fleet.broker_server["conf_dir"] = args.conf_dir


def _warn(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "init":
        port = args.broker_port or (8883 if args.tls else 1883)
        if (args.ca_file or args.ca_path) and not args.tls:
            raise FleetError("--ca-file only makes sense with --tls")
        if args.ca_path and not args.ca_file:
            raise FleetError("--ca-path needs a CA: give --ca-file too")
        server = {k: v for k, v in (("listen", args.listen), ("conf_dir", args.conf_dir)) if v}
        fleet = Fleet.create(args.dir, broker_host=args.broker_host, broker_port=port, tls=args.tls,
                             prefix=args.prefix, broker_server=server, ca_file=args.ca_file,
                             ca_path=args.ca_path)
        print(f"created {fleet.path} (secrets/ and out/ are git-ignored)")
        _warn(tls_warning(fleet.broker))
        return 0
    if args.action == "set-broker":
        fleet = Fleet.load(args.dir)
        broker_changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("tls", args.tls),
                                     ("keepalive_s", args.keepalive_s)) if v is not None}
        if args.id:
            if args.ca_file or args.ca_path or args.no_ca_file or args.listen or args.conf_dir:
                raise FleetError("--id: only --host, --port, --tls, --keepalive-s are per gateway"
                                 " (the CA and the broker side are the fleet's)")
            gw = fleet.gateway(args.id)
            override = {} if args.reset else dict(gw.broker, **broker_changes)
            fleet.edit_gateway(args.id, broker=override)
            fleet.save()
            print(f"{args.id}: broker {fleet.broker_for(args.id)} (username {args.id}, password kept)")
            _warn(tls_warning(fleet.broker_for(args.id)))
            return 0
        if args.reset:
            raise FleetError("--reset needs --id")
        if args.no_ca_file and (args.ca_file or args.ca_path):
            raise FleetError("--no-ca-file contradicts --ca-file/--ca-path")
        fleet.broker.update(broker_changes)
        _set_broker_server(fleet, args)
        pem = read_ca(args.ca_file) if args.ca_file else None
        if pem is not None:
            fleet.broker["ca_file"] = args.ca_path or fleet.broker.get("ca_file") or "ca.pem"
        elif args.ca_path:
            if not fleet.ca_path.exists():
                raise FleetError("--ca-path needs a CA: give --ca-file too")
            fleet.broker["ca_file"] = args.ca_path
        if args.no_ca_file:
            fleet.broker.pop("ca_file", None)
        fleet.check()
        for gid in sorted(fleet.gateways):
            fleet.check_gateway(gid)
        # Everything checked: now the files (a refused set-broker changes nothing).
        fleet.save()
        if pem is not None:
            write_atomic(fleet.ca_path, pem)
        if args.no_ca_file:
            fleet.ca_path.unlink(missing_ok=True)
        print(f"fleet broker: {fleet.broker}; re-run `render`, then rebuild and reflash the gateways")
        _warn(tls_warning(fleet.broker))
        return 0
    if args.action == "tls-init":
        from provisioning import tls

        fleet = Fleet.load(args.dir)
        if not args.keep_ca:
            if fleet.ca_path.exists() and not tls.ca_key_path(fleet).exists():
                raise FleetError(f"{fleet.ca_path} is a CA given with --ca-file and its key is not here: keep"
                                 " using that CA (sign the broker's certificate with it), or `set-broker"
                                 " --no-ca-file` first to make a fleet CA instead")
            if tls.ca_key_path(fleet).exists():
                print(f"replacing the fleet CA: every gateway needs the new {fleet.ca_path} (render, build,"
                      " flash); use --keep-ca to renew only the broker's certificate", file=sys.stderr)
            tls.init_ca(fleet)
            print(f"fleet CA: {fleet.ca_path} (key in {tls.ca_key_path(fleet)}, mode 0600)")
        names = args.name or [fleet.broker["host"]]
        tls.issue_broker_cert(fleet, names, days=args.days)
        if not fleet.broker.get("tls"):
            print("broker TLS switched on (check the port: `set-broker --port 8883`)", file=sys.stderr)
        fleet.broker["tls"] = True
        fleet.broker.setdefault("ca_file", "ca.pem")
        fleet.save()
        print(f"broker certificate: {tls.broker_cert_path(fleet)} for {', '.join(names)};"
              " run `render`, copy out/mosquitto/ to the broker and restart it")
        return 0
    if args.action == "tls-client":
        from provisioning import tls

        fleet = Fleet.load(args.dir)
        names = list(args.name)
        if args.all:
            names += [n for n in sorted(fleet.gateways) + sorted(fleet.service_users)
                      if not tls.has_current_client_cert(fleet, n) and n not in names]
        if not names and args.require is None:
            raise FleetError("tls-client: give --name ACCOUNT, --all or --require")
        for name in names:
            tls.issue_client_cert(fleet, name, days=args.days)
            print(f"client certificate for {name}: {fleet.client_cert_path(name)}"
                  f" (key in {fleet.client_key_path(name)}, mode 0600)")
        if args.require is not None:
            if args.require:
                fleet.broker_server["require_client_cert"] = True
            else:
                fleet.broker_server.pop("require_client_cert", None)
            fleet.save()
            print("the broker " + ("requires" if args.require else "no longer requires") +
                  " client certificates: run `render`, copy out/mosquitto/ to the broker and restart it")
        if names:
            print("run `render`; rebuild and reflash those gateways; give each service its"
                  " certificate and key")
        return 0
    if args.action == "add-gateway":
        fleet = Fleet.load(args.dir)
        sources = _read_json(args.sources, list, "--sources") if args.sources else []
        extra = _read_json(args.options, dict, "--options") if args.options else {}
        fleet.add_gateway(args.id, site=args.site, district=args.district, sources=sources, extra=extra,
                          site_broker=_site_broker(args, None))
        if args.site_broker_password_env:
            fleet.set_site_broker_password(args.id, _env(args.site_broker_password_env,
                                                         "--site-broker-password-env"))
        fleet.save()
        print(f"added {args.id}; password in {fleet.secrets_dir / (args.id + '.password')} (mode 0600)")
        return 0
    if args.action == "edit-gateway":
        fleet = Fleet.load(args.dir)
        gw = fleet.gateway(args.id)
        changes: dict[str, Any] = {}
        if args.site is not None:
            changes["site"] = args.site
        if args.district is not None:
            changes["district"] = args.district
        if args.sources:
            changes["sources"] = _read_json(args.sources, list, "--sources")
        if args.options:
            changes["extra"] = _read_json(args.options, dict, "--options")
        site_broker = _site_broker(args, gw.site_broker)
        if site_broker != gw.site_broker:
            changes["site_broker"] = site_broker
        changed = fleet.edit_gateway(args.id, **changes)
        if args.site_broker_password_env:
            fleet.set_site_broker_password(args.id, _env(args.site_broker_password_env,
                                                         "--site-broker-password-env"))
            changed.append("site broker password")
        elif args.no_site_broker:
            fleet.set_site_broker_password(args.id, None)
        fleet.save()
        print(f"{args.id}: " + (f"changed {', '.join(changed)}; re-run `render`, rebuild and reflash"
                                if changed else "nothing changed"))
        return 0
    if args.action == "remove-gateway":
        fleet = Fleet.load(args.dir)
        fleet.remove_gateway(args.id)
        fleet.save()
        print(f"removed {args.id} and its secret; run `render` and reload the broker to revoke its access")
        return 0
    if args.action == "rotate-password":
        fleet = Fleet.load(args.dir)
        if args.id:
            if args.password_env:
                raise FleetError("--password-env is for --user: gateway passwords are always random")
            fleet.rotate_password(args.id)
            who = args.id
        else:
            fleet.rotate_service_password(
                args.user, _env(args.password_env, "--password-env") if args.password_env else None)
            who = args.user
        fleet.save()
        then = (f"; then build and flash {who} at once: it is cut off from the reload until it runs the new"
                " config") if args.id else "; give the service its new password"
        print(f"new password for {who}; re-run `render` and reload the broker{then}")
        return 0
    if args.action == "add-service-user":
        fleet = Fleet.load(args.dir)
        password = _env(args.password_env, "--password-env") if args.password_env else None
        fleet.add_service_user(args.name, args.role, password)
        fleet.save()
        print(f"added service account {args.name} (role {args.role}); password in"
              f" {fleet.service_secret_path(args.name)} (mode 0600); run `render` and reload the broker")
        return 0
    if args.action == "remove-service-user":
        fleet = Fleet.load(args.dir)
        fleet.remove_service_user(args.name)
        fleet.save()
        print(f"removed service account {args.name}; run `render` and reload the broker to revoke it")
        return 0
    if args.action == "list":
        fleet = Fleet.load(args.dir)
        print(f"broker: {fleet.broker}  prefix: {fleet.prefix}")
        for name, u in sorted(fleet.service_users.items()):
            print(f"service {name}  role={u.role}")
        for gid, g in sorted(fleet.gateways.items()):
            kinds = ",".join(sorted({str(s.get("kind")) for s in g.sources})) or "-"
            notes = (" own-broker" if g.broker else "") + (" site-broker" if g.site_broker else "")
            print(f"gateway {gid}  site={g.site or '-'}  district={g.district or '-'}  kinds={kinds}{notes}")
        return 0
    if args.action == "show":
        fleet = Fleet.load(args.dir)
        fleet.check_gateway(args.id)
        shown = fleet.config_for(args.id, "(secret)")
        if "password" in shown.get("site_broker", {}):
            shown["site_broker"]["password"] = "(secret)"
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    if args.action == "render":
        from provisioning.render import render

        fleet = Fleet.load(args.dir)
        report = render(fleet, args.out or (args.dir / "out"))
        for w in report.warnings:
            _warn(w)
        for line in report.lines():
            print(line)
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

