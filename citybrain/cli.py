"""`citybrain <command>`: a thin dispatcher.

Each subcommand lives in the package it belongs to and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. The table below is the only place that knows them,
and modules are imported only when their command runs (the collector's imports stay out of
`citybrain decode`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The module's docstring becomes the command's long description.
COMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("citybrain.decode", "pretty-print a wire payload (CBOR file, hex or stdin)"),
    "simulate": ("citybrain.simulate", "run the device simulators and print their frames and readings"),
    "collector": (
        "collector.cli",
        "run the MQTT -> InfluxDB collector, check its config, see its dead letters",
    ),
    "gateway": ("citybrain.gateway", "run the gateway agent on a Linux gateway, or check its config"),
    "provision": ("provisioning.cli", "gateway identity, credentials, broker ACLs, configs, firmware"),
    "hil": ("hil.cli", "run a city block of gateways end to end into InfluxDB from a scenario file"),
    "demo": ("hil.brain_demo", "the city-block scenario end to end, then what the city brain sees"),
}

EPILOG = """\
examples:
  citybrain simulate --kind parking --count 5      frames and decoded readings from a simulated bay
  citybrain decode batch.cbor                      what a gateway batch contains
  citybrain hil run city-block                     six gateways end to end into InfluxDB, judged
  citybrain <command> --help                       every option of one command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citybrain",
        description="Edge-to-cloud telemetry for a city brain: gateway agent, device codecs, collector, "
        "provisioning and hardware-in-the-loop rigs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
