"""The layers import downwards only: devices/ (codecs, simulators) never imports edge/, so a kind
serves the board, the collector and the host tools without dragging the gateway agent along."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_devices_import_nothing_from_edge() -> None:
    files = sorted((ROOT / "devices").rglob("*.py"))
    assert len(files) > 10
    upward = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in _imports(f)
              if name == "edge" or name.startswith("edge.")]
    assert upward == []


# A CPython gateway built from every kind's sample source (edge.main's path: load_config, then the
# agent with its sources), reporting the device modules it ended up holding.
_GATEWAY = r"""
import json, sys
from edge.main import load_config
from edge.agent import Agent
from edge.ports.posix import PosixPort
agent = Agent(load_config(sys.argv[1]), PosixPort(False))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("devices."))))
"""


def test_a_gateway_loads_only_the_codecs_never_simulator_code(tmp_path: Path) -> None:
    """The agent reads a codec through its contract (docs/devices.md) and nothing else: a codec no
    longer forwards unknown names to its sim_encode half, so asking for an optional name (COUNTERS,
    N_REGISTERS) cannot load simulator code into a running gateway."""
    import json
    import subprocess
    import sys

    import devices

    sources = [json.loads((ROOT / "devices" / k / "sample.json").read_text()) for k in devices.KINDS]
    cfg = {"gateway_id": "gw-layers", "broker": {"host": "127.0.0.1"}, "site_broker": {"host": "127.0.0.1"},
           "store": {"dir": str(tmp_path / "spool")}, "sources": sources}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-c", _GATEWAY, str(tmp_path / "config.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert {f"devices.{k}.codec" for k in devices.KINDS} <= set(loaded)
    host_side = [m for m in loaded if m.rsplit(".", 1)[1].startswith(("sim", "vectors"))]
    assert host_side == []


def _codec_reads(path: Path) -> set[str]:
    """Names edge code reads from a codec: `codec.X`, `self.codec.X`, `getattr/hasattr(codec, "X")`."""

    def is_codec(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "codec") or (
            isinstance(node, ast.Attribute) and node.attr == "codec")

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and is_codec(node.value):
            names.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2 and is_codec(node.args[0])
              and isinstance(node.args[1], ast.Constant)):
            names.add(str(node.args[1].value))
    return names


def test_edge_reads_only_the_codec_contract() -> None:
    """The contract in docs/devices.md is the whole of what the board reads from a codec: a new read
    in edge/ must be added there (and to every codec) first."""
    from tests.portable.test_codec_contract import OPTIONAL, REQUIRED

    contract = {name for name, _ in REQUIRED + OPTIONAL}
    files = sorted((ROOT / "edge").rglob("*.py"))
    reads = {name: f.relative_to(ROOT) for f in files for name in _codec_reads(f)}
    assert {"FIELDS", "decode", "ANALOG", "COUNTERS"} <= set(reads)  # the walk sees what it must
    assert {n: str(f) for n, f in reads.items() if n not in contract} == {}
    doc = (ROOT / "docs" / "devices.md").read_text()
    assert [n for n in sorted(contract) if f"`{n}`" not in doc] == []


def _imports_under(folder: str) -> list[str]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [f"{f.relative_to(ROOT)}: {name}" for f in files for name in _imports(f)]


def test_the_mqtt_client_imports_nothing_from_devices() -> None:
    """edge/mqtt/ is transport: its backoff jitter comes from the interpreter's `random`, not from the
    simulators' generator in devices/common (a sideways import into the device layer)."""
    found = _imports_under("edge/mqtt")
    assert any(": edge.mqtt" in line for line in found)  # the walk sees the package's own imports
    assert [line for line in found if line.split(": ")[1].split(".")[0] == "devices"] == []


def test_the_cli_does_not_import_the_hil_rig() -> None:
    """citybrain/ (the installed CLI: simulate, decode, gateway, provision) needs no test rig:
    `simulate --publish HOST:PORT` uses a broker it is given; the rig's services start one."""
    found = _imports_under("citybrain")
    assert any(": devices" in line for line in found)
    assert [line for line in found if line.split(": ")[1].split(".")[0] == "hil"] == []


def _private_reads(source: str) -> list[str]:
    """`x._name` for any x but `self` (a module's own `_NAME` globals are plain names, not reads)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            out.append(f"line {node.lineno}: {ast.unparse(node)}")
    return out


def test_commands_change_settings_through_public_methods() -> None:
    """edge/command.py (issue 10) reaches the agent, its sources and their rule filters only through
    what they make public (`publish_status`, `request_flush`, `set_deadband`...), never their
    private attributes: a rename inside the agent cannot silently break a command. (Before
    fd26c24 it called `agent._publish_status`, which this finds.)"""
    assert _private_reads((ROOT / "edge" / "command.py").read_text()) == []
    assert _private_reads("async def run(agent):\n    await agent._publish_status()\n") == [
        "line 2: agent._publish_status"]
