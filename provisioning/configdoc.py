"""Generate docs/gateway-config.md from the schema in edge/config.py, so the doc cannot drift.

Run `python -m provisioning.configdoc > docs/gateway-config.md`; a test fails when the committed
doc differs from what this prints.
"""

from __future__ import annotations

import json
from typing import Any

from edge import config as c

SECTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("top level", "config", c.GATEWAY),
    ("broker / site_broker", "config.broker", c.BROKER),
    ("store", "config.store", c.STORE),
    ("uplink", "config.uplink", c.UPLINK),
    ("sources[]", "config.sources[i]", c.SOURCE),
    ("sources[].slaves[] (modbus)", "config.sources[i].slaves[j]", c.SLAVE),
    ("sources[].slaves[].map.<field> (modbus register map)", "config.sources[i].slaves[j].map.<field>",
     c.REGISTER),
]

EXAMPLE = {
    "gateway_id": "gw-xihu-0001",
    "prefix": "city",
    "site": "文三路",
    "broker": {"host": "mqtt.city.example", "port": 8883, "tls": True, "ca_file": "ca.pem",
               "username": "gw-xihu-0001", "password": "(from provisioning)"},
    "store": {"dir": "spool", "budget_bytes": 1048576},
    "uplink": {"batch_max": 50, "batch_age_ms": 1000},
    "sources": [
        {"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0", "baud": 9600,
         "sensors": ["P-00012", "P-00013"], "max_silence_s": 300},
        {"kind": "water", "transport": "modbus", "port": "/dev/ttyUSB1", "baud": 9600,
         "slaves": [{"address": 1, "sensor": "W-xixi-01", "poll_ms": 10000},
                    {"address": 2, "sensor": "W-xixi-02", "function": 4, "max_gap_registers": 1,
                     "map": {"temp_c": {"register": 0, "type": "int16", "scale": 0.1},
                             "ph": {"register": 1, "type": "uint16", "scale": 0.01},
                             "level_m": {"register": 3, "type": "int16", "scale": 0.001}}}]},
    ],
}


def _default(value: object) -> str:
    if value is c.REQUIRED:
        return "**required**"
    if value is None:
        return "—"
    return "`" + json.dumps(value) + "`"


def render() -> str:
    out = [
        "# Gateway config (config.json)",
        "",
        "Generated from `edge/config.py` by `python -m provisioning.configdoc`; do not edit by hand.",
        "`citybrain provision render` writes one per gateway; the agent validates it at boot and stops",
        "with an error naming the key (and the closest valid key) on any unknown or mistyped entry.",
        "",
    ]
    for title, path, schema in SECTIONS:
        out += [f"## {title}", "", f"Path: `{path}`", "", "| key | type | default | meaning |",
                "|---|---|---|---|"]
        for key, (typ, default, help_text) in schema.items():
            out.append(f"| `{key}` | {typ.__name__} | {_default(default)} | {help_text} |")
        out.append("")
    out += ["## Example", "", "```json", json.dumps(EXAMPLE, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
