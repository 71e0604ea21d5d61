"""Flash an image onto a board so that a cut cable or a power cut at any moment leaves it bootable.

The board's filesystem, as `flash` leaves it:

    main.py             the boot selector (BOOT_PY): the same bytes for every image
    active              one line, the folder of the image to boot, e.g. "a-3f2a9c1d0e12"
    a-<hash>/           the image (edge/, devices/, config.json, ca.pem): the A slot ...
    b-<hash>/           ... or the B slot; the other slot only exists during a flash
    spool/              the gateway's store (config store.dir), outside the image: it survives

A flash: read the board (its image, its gateway id) -> refuse another gateway's board unless
reassigning -> copy the new image into the free slot -> read every file's sha256 back *from the
board* and compare it with the image manifest -> (reassign: wipe the store) -> the switch-over:
write `active.tmp`, read it back, rename it onto `active` -> replace main.py if it is not the
selector yet (also a rename) -> remove the old slot and any leftovers.

Until the rename returns the board boots its old image; after it, the new one. A rename replaces
its target in one step on LittleFS and POSIX; where it cannot (FAT), `active` is removed first
and the selector then boots `active.tmp`, which is whole and checked by then. So there is no
moment without a bootable image, and every error says which image the board boots and what to run.

The board is driven through mpremote's SerialTransport (raw REPL), in-process, so progress and
errors are ours. The code sent to the board is small and MicroPython-safe.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.bringup import check_board_mpy
from provisioning.firmware import read_manifest
from provisioning.fleet import FleetError

BOOT_PY = b"""# citybrain boot selector (from `citybrain provision flash`): boots the image named in `active`
import sys
try:
    f = open("active")
except OSError:
    f = open("active.tmp")  # FAT: the switch-over removed `active` before renaming this onto it
d = f.read().strip()
f.close()
sys.path.insert(0, d)
import edge.main
edge.main.main(d + "/config.json", image=d[2:])
"""

POINTER = "active"
SLOT = re.compile(r"^[ab]-[0-9a-f]{12}$")
LEGACY_NAMES = ("edge", "devices", "config.json", "config.checked")  # a flat image of an earlier build
CHUNK = 512  # bytes per write on the board: a 1 KB raw-paste window holds it with repr() escapes

# Defined once per session on the board: read a file (None if absent), remove a tree, hash a tree.
_HELPERS = """import os, sys
def _rd(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    d = f.read()
    f.close()
    return d
def _rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in list(os.ilistdir(p)):
            _rm(p + '/' + e[0])
        os.rmdir(p)
    else:
        os.remove(p)
def _sha(p):
    import hashlib, binascii
    b = bytearray(256)
    for e in os.ilistdir(p):
        q = p + '/' + e[0]
        if e[1] & 0x4000:
            _sha(q)
            continue
        h = hashlib.sha256()
        f = open(q, 'rb')
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(b if n == len(b) else b[:n])
        f.close()
        print(q, binascii.hexlify(h.digest()).decode())
"""


class FlashError(FleetError):
    """The flash stopped; the message says which image the board boots now and what to run."""


@dataclass(frozen=True)
class Progress:
    """One step of a flash, for a progress bar: `phase` in survey, copy, verify, switch, clean, done."""

    phase: str
    done_bytes: int = 0
    total_bytes: int = 0
    done_files: int = 0
    total_files: int = 0
    detail: str = ""


@dataclass
class BoardImage:
    """What a board runs: `layout` is blank, legacy (flat image of an earlier citybrain) or slots."""

    layout: str
    folder: str = ""  # the active slot (slots layout)
    gateway_id: str | None = None
    config: dict[str, Any] | None = None
    config_error: str = ""
    root: tuple[tuple[str, bool], ...] = ()  # (name, is_dir) at the root
    main_py: bytes | None = None

    def describe(self) -> str:
        gw = self.gateway_id or "unknown gateway"
        if self.layout == "blank":
            return "no citybrain image (nothing that boots the agent)"
        if self.layout == "legacy":
            return f"its old image (flat layout of an earlier citybrain, {gw})"
        return f"its old image {self.folder[2:]} ({gw})"


REPL_TIMEOUT_S = 10.0  # mpremote's own bound for each step of entering the raw REPL
_RAW_REPL = b"raw REPL; CTRL-B to exit\r\n"


def _read_until(ser: Any, ending: bytes, deadline: float) -> bytes:
    """Bytes from the port up to and including `ending`, one at a time (what follows belongs to
    the next exchange); OSError once `deadline` passes, however much the port says meanwhile."""
    data = b""
    while not data.endswith(ending):
        if time.monotonic() >= deadline:
            heard = f"it said {data[-60:]!r}" if data else "it said nothing"
            raise OSError(f"no MicroPython raw REPL answered within {REPL_TIMEOUT_S:.0f} s ({heard})")
        data += ser.read(1)
    return data


def _enter_raw_repl(t: Any, *, soft_reset: bool) -> None:
    """mpremote's enter_raw_repl with a deadline that holds while the port keeps talking.

    mpremote checks its overall timeout only when the port is silent: on a port that streams (the
    wrong port, with a GPS or a meter on it; a program that does not stop at Ctrl-C and prints)
    it waited forever, with nothing on the screen."""
    ser = t.serial
    saved = ser.timeout
    ser.timeout = 0.1
    try:
        ser.write(b"\r\x03")  # Ctrl-C: stop the running program
        ser.reset_input_buffer()
        ser.write(b"\r\x01")  # Ctrl-A: raw REPL
        if soft_reset:
            _read_until(ser, _RAW_REPL + b">", time.monotonic() + REPL_TIMEOUT_S)
            ser.write(b"\x04")  # Ctrl-D: soft reset
            _read_until(ser, b"soft reboot\r\n", time.monotonic() + REPL_TIMEOUT_S)
        _read_until(ser, _RAW_REPL, time.monotonic() + REPL_TIMEOUT_S)
    finally:
        ser.timeout = saved
    t.in_raw_repl = True


def _open_transport(port: str, resume: bool) -> Any:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    t = None
    try:
        t = SerialTransport(port, baudrate=115200)
        # A board's soft reset stops the running agent cleanly; the unix port's would end it.
        _enter_raw_repl(t, soft_reset=not resume)
    except (TransportError, OSError) as exc:
        if t is not None:
            t.close()
        raise FlashError(f"cannot reach a MicroPython REPL on {port}: {exc}. Nothing was changed on the "
                         "board. Check the cable and the port (ls /dev/ttyUSB* /dev/ttyACM*), close any "
                         "other program using it (a serial monitor, another mpremote), and run flash again"
                         ) from None
    return t


class Board:
    """A raw-REPL session with the helpers loaded; every transport failure becomes OSError."""

    def __init__(self, port: str, *, resume: bool) -> None:
        self.port = port
        self.t = _open_transport(port, resume)
        self.run(_HELPERS)

    def run(self, code: str) -> bytes:
        from mpremote.transport import TransportError, TransportExecError
        from serial import SerialException

        try:
            out: bytes = self.t.exec(code)
            return out
        except TransportExecError as exc:
            raise OSError(f"the board said: {exc.error_output.strip().splitlines()[-1]}") from None
        except (TransportError, SerialException) as exc:
            raise OSError(f"lost the board on {self.port}: {exc}") from None

    def eval(self, expr: str) -> Any:
        return ast.literal_eval(self.run(f"print(repr({expr}))").decode().strip())

    def write(self, path: str, data: bytes, on_chunk: Callable[[int], None]) -> None:
        self.run(f"f = open({path!r}, 'wb')\nw = f.write")
        for i in range(0, len(data), CHUNK):
            chunk = data[i:i + CHUNK]
            self.run(f"w({chunk!r})")
            on_chunk(len(chunk))
        self.run("f.close()")

    def close(self) -> None:
        try:
            self.t.exit_raw_repl()
            self.t.close()
        except Exception:  # the board may be gone: there is nothing left to close cleanly
            pass


def survey(board: Board) -> BoardImage:
    """Read which image the board boots and whose it is."""
    root, main_py, pointer, pointer_tmp = board.eval(
        "(sorted((e[0], bool(e[1] & 0x4000)) for e in os.ilistdir()), _rd('main.py'), _rd('active'), "
        "_rd('active.tmp'))")
    root = tuple((str(n), bool(d)) for n, d in root)
    names = {n for n, _ in root}
    if main_py == BOOT_PY and (pointer or pointer_tmp):
        folder = (pointer or pointer_tmp).decode().strip()
        img = BoardImage("slots", folder=folder, root=root, main_py=main_py)
        cfg_path = folder + "/config.json"
    elif main_py is not None and "config.json" in names and "edge" in names:
        img = BoardImage("legacy", root=root, main_py=main_py)
        cfg_path = "config.json"
    else:
        return BoardImage("blank", root=root, main_py=main_py)
    raw = board.eval(f"_rd({cfg_path!r})")
    try:
        img.config = json.loads(raw)
        img.gateway_id = str(img.config["gateway_id"])
    except (TypeError, ValueError, KeyError) as exc:
        img.config_error = f"{cfg_path} on the board is unreadable ({exc})"
    return img


def _store_dirs(*configs: dict[str, Any] | None) -> list[str]:
    dirs: list[str] = []
    for cfg in configs:
        if cfg is not None:
            d = str((cfg.get("store") or {}).get("dir") or "spool")
            if d not in dirs:
                dirs.append(d)
    return dirs


def check_identity(old: BoardImage, new_gw: str, *, reassign: bool, port: str, stores: list[str]) -> None:
    """Finding: a board reflashed with another gateway's image published the old gateway's spool
    under the new id. Refuse unless the tech says --reassign (which wipes the store). `stores`:
    the store folders present on the board."""
    if reassign:
        return
    if old.layout == "blank":
        if stores:
            raise FlashError(f"the board on {port} has a store ({', '.join(stores)}) but no image to tell "
                             "whose readings it holds. Nothing was changed. If this board is to become "
                             f"{new_gw}, run flash again with --reassign (the store is wiped)")
        return
    if old.config_error:
        raise FlashError(f"the board on {port} has an image whose gateway id cannot be read: "
                         f"{old.config_error}. Nothing was changed. If this board is to become "
                         f"{new_gw}, run flash again with --reassign (its spool and boot counter are wiped)")
    if old.gateway_id != new_gw:
        raise FlashError(
            f"the board on {port} is gateway {old.gateway_id}, this image is for {new_gw}. Nothing was "
            f"changed. Flashing it would publish {old.gateway_id}'s spooled readings under {new_gw}. If "
            f"the board is to become {new_gw}, run flash again with --reassign: its spool and state "
            f"(boot counter) are wiped, and {old.gateway_id}'s readings not yet delivered are lost")


@dataclass
class FlashResult:
    image: str
    folder: str
    gateway_id: str
    old: BoardImage
    wiped: list[str]
    seconds: float
    bytes: int


def flash(image: Path, port: str, *, resume: bool = False, reassign: bool = False,
          progress: Callable[[Progress], None] | None = None) -> FlashResult:
    """Copy `image` onto the board on `port`, verify it there, switch over; FlashError on failure."""
    manifest = read_manifest(image)
    files: dict[str, str] = manifest["files"]
    new_hash = str(manifest["image"])
    new_gw = str(manifest["gateway_id"])
    datas = {rel: (image / rel).read_bytes() for rel in sorted(files)}
    total = sum(len(d) for d in datas.values())
    report = progress or (lambda p: None)
    started = time.monotonic()

    report(Progress("survey", 0, total, 0, len(files), port))
    board = Board(port, resume=resume)
    old: BoardImage | None = None
    stage = ""
    step = "survey"  # how far we got: survey, copy, wipe, switch, switched
    try:
        old = survey(board)
        mpy, version = board.eval("(getattr(sys.implementation, '_mpy', None), "
                                  "'.'.join(str(v) for v in sys.implementation.version[:3]))")
        image_mpy = next(d for rel, d in datas.items() if rel.endswith(".mpy"))[1]
        check_board_mpy(mpy, version, image_mpy, port)
        root_names = {n for n, _ in old.root}
        stores = [d for d in _store_dirs(old.config, json.loads(datas["config.json"]))
                  if d.split("/")[0] in root_names]
        check_identity(old, new_gw, reassign=reassign, port=port, stores=stores)
        slot = "b" if old.folder.startswith("a-") else "a"
        stage = f"{slot}-{new_hash}"
        # Leftovers of an interrupted flash (a half-copied slot, a pointer never renamed) go first:
        # they do not boot, and they take the board's flash space.
        for name, is_dir in old.root:
            if (is_dir and SLOT.match(name) and name != old.folder) or name in ("active.tmp", "main.tmp"):
                board.run(f"_rm({name!r})")
        step = "copy"
        done = 0
        dirs = sorted({str(Path(rel).parent) for rel in files} - {"."}, key=lambda d: (d.count("/"), d))
        board.run(f"os.mkdir({stage!r})\n" + "".join(f"os.mkdir({stage + '/' + d!r})\n" for d in dirs))
        for i, (rel, data) in enumerate(datas.items(), 1):
            def on_chunk(n: int, i: int = i, rel: str = rel) -> None:
                nonlocal done
                done += n
                report(Progress("copy", done, total, i - 1, len(files), rel))
            board.write(f"{stage}/{rel}", data, on_chunk)
            report(Progress("copy", done, total, i, len(files), rel))
        # Read back from the board, not from our side of the cable.
        report(Progress("verify", total, total, 0, len(files)))
        seen: dict[str, str] = {}
        for line in board.run(f"_sha({stage!r})").decode().splitlines():
            path, _, digest = line.strip().rpartition(" ")
            seen[path.removeprefix(stage + "/")] = digest
        bad = sorted(rel for rel in files if seen.get(rel) != files[rel])
        extra = sorted(set(seen) - set(files))
        if bad or extra:
            raise OSError(f"the copy on the board differs from the image: {len(bad)} file(s) wrong or "
                          f"missing ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}), "
                          f"extra {extra[:3]}")
        report(Progress("verify", total, total, len(files), len(files)))
        wiped: list[str] = []
        if reassign and stores:
            step = "wipe"
            wiped = stores
            for d in wiped:
                board.run(f"_rm({d!r})")
        step = "switch"
        report(Progress("switch", total, total, len(files), len(files), stage))
        board.run(f"f = open('active.tmp', 'w')\nf.write({stage!r})\nf.close()")
        if board.eval("_rd('active.tmp')") != stage.encode():
            raise OSError("the pointer file active.tmp did not read back as written")
        report(Progress("switch", total, total, len(files), len(files), "active.tmp written"))
        # The one step that changes what boots (see the module docstring for FAT).
        board.run("try:\n    os.rename('active.tmp', 'active')\nexcept OSError:\n"
                  "    _rm('active')\n    os.rename('active.tmp', 'active')")
        if old.main_py != BOOT_PY:
            # A blank board or the flat layout: the selector takes over main.py, also by a rename.
            report(Progress("switch", total, total, len(files), len(files), "active renamed"))
            board.write("main.tmp", BOOT_PY, lambda n: None)
            report(Progress("switch", total, total, len(files), len(files), "main.tmp written"))
            board.run("try:\n    os.rename('main.tmp', 'main.py')\nexcept OSError:\n"
                      "    _rm('main.py')\n    os.rename('main.tmp', 'main.py')")
        step = "switched"
        report(Progress("clean", total, total, len(files), len(files)))
        stale = [old.folder] if old.layout == "slots" and old.folder != stage else []
        # The flat layout's files (also when a cut came between an earlier switch and its clean-up):
        # the selector puts the image folder first on sys.path, so they are never imported again.
        stale += [n for n in LEGACY_NAMES if n in {r for r, _ in old.root}]
        for name in stale:
            board.run(f"_rm({name!r})")
    except FleetError:
        raise  # refused before anything was written: the message says so
    except (OSError, KeyboardInterrupt) as exc:
        # KeyboardInterrupt: the tech pressed Ctrl-C, as good a cut as any, and told the same way.
        why = exc if isinstance(exc, OSError) else OSError("interrupted (Ctrl-C)")
        flags = (" --resume" if resume else "") + (" --reassign" if reassign else "")
        again = f"citybrain provision flash --port {port}{flags} {image}"
        raise FlashError(_failure(why, step, old, stage, again)) from None
    finally:
        board.close()
    report(Progress("done", total, total, len(files), len(files)))
    return FlashResult(new_hash, stage, new_gw, old, wiped, time.monotonic() - started, total)


def _failure(exc: OSError, step: str, old: BoardImage | None, stage: str, again: str) -> str:
    """In words: what went wrong, which image the board boots now, what to run (`again`)."""
    new = stage[2:] if stage else "the new image"
    if step == "switched":
        return (f"{exc}. The board boots the NEW image {new}; only removing the old image's files failed "
                f"(the next flash removes them). Nothing else to do, or run `{again}` to tidy up now")
    if old is None or step == "survey":
        return (f"{exc}. Nothing was changed on the board: it boots what it booted before. "
                f"Run `{again}` again")
    was = old.describe()
    if step == "switch":
        if old.layout == "blank":
            return (f"{exc}. The cut came during the switch-over: the board boots the new image {new} "
                    f"or none. Run `{again}` again")
        return (f"{exc}. The cut came during the one-step switch-over: the board boots either {was} or the "
                f"new image {new}, both whole. Run `{again}` again to be sure")
    wiped = " Its spool and state were already wiped (--reassign)." if step == "wipe" else ""
    if old.layout == "blank":
        return (f"{exc}. The board has no bootable image (it was blank; the copy is incomplete). "
                f"Run `{again}` again")
    return (f"{exc}. The board still boots {was}: the new image {new} was not switched to and is "
            f"removed by the next flash.{wiped} Run `{again}` again")
