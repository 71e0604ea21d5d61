"""Run the collector (MQTT -> InfluxDB), check its configuration file, or look at what it refused.

  citybrain collector run --config collector.toml
  citybrain collector check-config --config collector.toml
  citybrain collector dead-letters list --config collector.toml --reason db_type_conflict
  citybrain collector dead-letters replay --config collector.toml 42

Every option lives in the TOML file (see collector/sample.toml); the flags below override single keys
for a quick test and map onto config keys through `collector.config.FLAGS`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from collector import config as cfg
from collector import deadletters_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    run_p = sub.add_parser("run", help="run the collector until SIGTERM/SIGINT (drains, then exits)")
    check_p = sub.add_parser("check-config", help="load and validate the config, print the effective values")
    dl_p = sub.add_parser(
        "dead-letters",
        help="list, show or replay what the collector refused (the dead-letter store)",
        description=deadletters_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deadletters_cli.add_arguments(dl_p)
    for p in (run_p, check_p):
        p.add_argument("--config", "-c", metavar="FILE", help="TOML config file (default: built-in defaults)")
        group = p.add_argument_group("overrides (each sets one config key)")
        for flag, key, help_text in cfg.FLAGS:
            group.add_argument(flag, dest=flag_dest(flag), metavar="VALUE", help=f"{help_text} [{key}]")


def flag_dest(flag: str) -> str:
    return "set_" + flag.lstrip("-").replace("-", "_")


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """Config key -> text for every flag given on the command line."""
    out: dict[str, str] = {}
    for flag, key, _ in cfg.FLAGS:
        value = getattr(args, flag_dest(flag), None)
        if value is not None:
            out[key] = value
    return out


def _render(config: cfg.Config) -> str:
    """The effective configuration as TOML-ish text, secrets masked."""
    import dataclasses

    lines: list[str] = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if section.name == "gateways":
            for gw, info in value.items():
                lines.append(f"[gateways.{gw}]")
                lines += [f"{k} = {v!r}" for k, v in dataclasses.asdict(info).items()]
            continue
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name in ("password", "token") and v:
                v = "***"
            lines.append(f"{f.name} = {v!r}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config, overrides=overrides(args))
    except cfg.ConfigError as exc:
        print(f"citybrain collector: config error: {exc}", file=sys.stderr)
        return 2
    if args.action == "check-config":
        print(_render(config))
        return 0
    if args.action == "dead-letters":
        return deadletters_cli.run(config, args)
    logging.basicConfig(
        level=config.service.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from collector.service import run as serve

    return asyncio.run(serve(config))


def main(argv: list[str] | None = None) -> int:
    """`python -m collector.cli run ...`: the same command without the `citybrain` dispatcher."""
    parser = argparse.ArgumentParser(
        prog="citybrain collector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
