"""The gateway HIL rig: the real agent process between simulated sensors and a private broker.

Pieces, each started here and stopped by PID at the end (`Rig.close`, or `with Rig(...)`):

  broker      a private Mosquitto (hil.services) for the uplink and, under `site/...`, the
              site broker the manhole lids publish to
  serial      one pseudo-terminal per serial device; the rig writes a Simulator's frames to the
              pty master at a configurable speed (simulated seconds per real second), or random
              bytes for a garbage-spewing device; the agent opens the /dev/pts side
  modbus      a `socat` null-modem (two linked ptys) with hil/water_slave.py (pymodbus RTU server)
              on one end and the agent on the other; the agent's config may name a slave address
              nobody serves (a dead station)
  lids        manhole Simulators publishing JSON to the site broker with paho
  agent       the gateway as a subprocess: CPython (`python -m citybrain.cli gateway run`) or the
              real MicroPython unix port on .mpy files built by provisioning.firmware.build
  subscriber  paho on `<prefix>/<gw>/#` (persistent session, so a broker restart loses nothing)
              recording every payload with its arrival time

Faults: `restart_broker()`, `kill_agent()` (SIGKILL: a power cut, possibly mid-append) and
`start_agent()`, `tear_log_tail()` (after a kill: what a power cut does to the record being
written, which SIGKILL cannot do), garbage devices and fault modes of the simulators, a dead Modbus slave.
Every good frame the rig writes is recorded (hil.verify.Emission) so `verify()` can prove what
arrived. Scenarios built from these live in hil/scenarios.py; `python -m hil.rig --help`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
import zlib
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt

from devices.common.rng import Rng
from devices.manhole.sim import Simulator as LidSim
from devices.parking.sim import Simulator as ParkingSim
from devices.thermometer.sim import Simulator as ThermometerSim
from edge.store.log import HEADER, MAGIC
from hil.services import (
    Mosquitto,
    ServiceError,
    find_binary,
    micropython32_binary,
    micropython_binary,
    stop_process,
)
from hil.verify import Emission, Outage, Report, verify
from hil.water_slave import bank, map_entries, served, station

ROOT = Path(__file__).resolve().parent.parent
# What the tests run every scenario under; "micropython32" (the 32-bit build, hil.services) is also
# accepted, for the board-heap guard and by hand: a board's pointers are 32 bits wide.
INTERPRETERS = ("cpython", "micropython")
ALL_INTERPRETERS = (*INTERPRETERS, "micropython32")
PREFIX = "hil"
WATER_NOW_MS = 13 * 3600 * 1000  # the slaves' register snapshot: early afternoon
# The unix port loads .mpy bytecode into its heap (a board freezes it into flash): the agent with
# all four kinds needs 240K that way, parking alone 176K, so 128K fails at import (docs/hil.md).
MICROPYTHON_HEAP = "256K"


class RigError(RuntimeError):
    """The rig could not bring a part up (binary missing, agent died, no answer in time)."""


@dataclass(frozen=True)
class TornWrite:
    """What `Rig.tear_log_tail` did to the newest record of the active segment (edge/store/log.py).

    `age_s`: kill time minus the segment's mtime, i.e. how long before the kill that record's
    bytes were written. `record` is its payload (a CBOR reading, edge/record.py) as it was.
    """

    mode: str  # "truncate" or "garbage"
    segment: str
    start: int  # offset of the record's magic byte: every byte before it must survive
    end: int  # offset after the record (the segment's size before the tear, without a torn tail)
    cut_at: int  # truncate: the new size; garbage: -1
    garbled: tuple[int, ...]  # garbage: offsets overwritten (each byte changed); truncate: ()
    age_s: float
    record: bytes
    prefix: bytes  # the segment's bytes before `start`


TEAR_MODES = ("truncate", "garbage")
_PLACEHOLDER_SPEED = termios.B50  # a pty's speed until the agent sets its own (the config refuses 50)


def last_record(data: bytes) -> tuple[int, int, int] | None:
    """(start, end, good end) of the last good record of a segment's bytes, or None if it has none.

    Uses the store's framing (magic, u16 length, crc32 over length and payload); the good end is
    where the store's boot recovery would cut, so end == len(data) unless the tail is already torn.
    """
    pos = 0
    last = None
    while pos + HEADER <= len(data) and data[pos] == MAGIC:
        n = data[pos + 1] | (data[pos + 2] << 8)
        end = pos + HEADER + n
        if end > len(data):
            break
        crc = zlib.crc32(data[pos + 3 + 4 : end], zlib.crc32(data[pos + 1 : pos + 3]))
        if crc != int.from_bytes(data[pos + 3 : pos + 7], "little"):
            break
        last = (pos, end)
        pos = end
    return None if last is None else (last[0], last[1], pos)


class SerialDevice:
    """A pty whose /dev/pts side the agent reads; the rig writes a simulator's frames to the master.

    `speed` simulated ms per real ms; `fault` a simulator fault mode (faulty frames are written but
    recorded with fields None). With `noise` the device writes random bytes only (sim is None).
    """

    def __init__(self, kind: str, sensors: Sequence[str], sim: Any, *, speed: float = 1.0,
                 noise: int = 0, seed: int = 1, link: str | None = None) -> None:
        self.kind = kind
        self.sensors = list(sensors)
        self.sim = sim
        self.speed = speed
        self.noise = noise  # bytes per tick of garbage
        self.rng = Rng(seed)
        self.link = link  # a stable name for the pty (as udev's /dev/serial/by-id), for unplug/replug
        self.plugged = False
        self._plug()
        self.path = link or self.tty
        self.t0_sim = 1_795_676_000_000
        self.t0_real: float | None = None
        self.dropped = 0  # frames not written: pty full

    def _plug(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline before the agent sets it raw itself
        # A speed no agent config uses: when it is gone, the agent has set the tty up (see `set_up`).
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = _PLACEHOLDER_SPEED
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self.master, False)
        self.tty = os.ttyname(self._slave)
        if self.link is not None:
            os.symlink(self.tty, self.link + ".new")
            os.replace(self.link + ".new", self.link)
        self.plugged = True

    def unplug(self) -> None:
        """The adapter is pulled: the pty goes away (the agent's open fd reads EIO / hangs up) and
        so does its stable name; frames the device makes meanwhile go nowhere."""
        if self.link is None:
            raise RigError("unplug needs a device made with a stable link name")
        self.plugged = False
        os.remove(self.link)
        self.close()

    def set_up(self) -> bool:
        """Whether the agent has set this pty up since it was plugged: its last step (edge/ports/tty.py,
        the baud) has replaced the placeholder speed, so the raw mode before it, which discards the
        input not yet read, is done and a frame written now reaches the agent. The settings are the
        tty's, shared by every fd on it, so the rig's own slave fd shows them."""
        return termios.tcgetattr(self._slave)[4] != _PLACEHOLDER_SPEED

    def unread(self) -> int:
        """Bytes written to the pty that the agent has not read yet (FIONREAD on the slave side,
        which only the agent reads)."""
        n = array("i", [0])
        fcntl.ioctl(self._slave, termios.FIONREAD, n)
        return n[0]

    def replug(self) -> None:
        """Plugged back: a new pty (a new /dev/pts number) under the same stable name. The device
        stays silent (`plugged` False) until `Rig.replug` has seen the agent open it: a tty is
        flushed when the agent sets it raw, so earlier frames would be lost by design."""
        self._plug()
        self.plugged = False

    def step(self, now: float, live: bool, record: Callable[[Emission], None]) -> None:
        if self.t0_real is None:
            self.t0_real = now
        live = live and self.plugged
        if self.sim is None:
            if live and self.noise:
                self._write(bytes(self.rng.below(256) for _ in range(self.noise)))
            return
        t_sim = self.t0_sim + int((now - self.t0_real) * 1000 * self.speed)
        while True:
            frame = self.sim.next_frame(t_sim)
            if frame is None:
                return
            reading = self.sim.last_reading
            if not live:
                continue  # the gateway is powered off: the frame goes nowhere
            if self._write(frame) and reading is not None:
                record(Emission(time.time(), reading[0], self.kind, tuple(reading[1])))

    def _write(self, data: bytes) -> bool:
        try:
            n = os.write(self.master, data)
        except BlockingIOError:
            n = 0
        if n != len(data):
            self.dropped += 1  # a partial frame is garbage to the agent; a missing one is silence
            return False
        return True

    def close(self) -> None:
        for fd in (self.master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self._slave = -1  # closed once: the numbers may be reused by then


class LidPublisher:
    """Manhole lids reporting over NB-IoT to the site broker: one JSON message per `interval_s`."""

    def __init__(self, broker_port: int, topic_base: str, sensors: Sequence[str], *, seed: int = 5,
                 interval_s: float = 0.1, gw: str = "") -> None:
        self.sim = LidSim(list(sensors), seed=seed, open_chance=0.02)
        self.sensors = list(sensors)
        self.topic_base = topic_base
        self.interval_s = interval_s
        self.next_t = 0.0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-lids-{gw}-{os.getpid()}",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.t_ms = 1_795_676_000_000

    def step(self, now: float, live: bool, record: Callable[[Emission], None]) -> None:
        if now < self.next_t:
            return
        self.next_t = now + self.interval_s
        self.t_ms += int(self.interval_s * 1000)
        frame = self.sim.next_frame(self.t_ms)
        reading = self.sim.last_reading
        if frame is None or reading is None or not self.client.is_connected():
            return  # a lid's modem retries later in real life; here the frame is simply not sent
        info = self.client.publish(f"{self.topic_base}/{reading[0]}", frame, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            record(Emission(time.time(), reading[0], "manhole", tuple(reading[1])))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ModbusBus:
    """A socat null-modem with the pymodbus water slave on one end; the agent gets `path`."""

    def __init__(self, workdir: Path, slaves: Sequence[tuple[int, str]], *, seed: int = 4,
                 layouts: Sequence[Mapping[str, Any]] = ()) -> None:
        self.slaves = list(slaves)  # (address, word order "ABCD"/"CDAB") the slave process serves
        self.layouts = list(layouts)  # slave config entries with a vendor `map`, served in that layout
        self.seed = seed
        self.workdir = workdir
        self.path = str(workdir / "bus-gw")
        # Addresses written here stop answering (`mute`, the block's dead_slave fault).
        self.mute_file = str(workdir / "bus-muted")
        self.procs: list[subprocess.Popen[bytes]] = []  # every socat and slave ever started
        self.plug()

    def plug(self) -> None:
        """Start the null-modem and the slave (again, after `unplug`: a new pty, the same path)."""
        dev = str(self.workdir / "bus-dev")
        self.socat = subprocess.Popen(
            [find_binary("socat"), f"pty,raw,echo=0,link={self.path}", f"pty,raw,echo=0,link={dev}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.socat)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.path) and os.path.exists(dev)):
            if time.monotonic() > deadline or self.socat.poll() is not None:
                self.close()
                raise RigError("socat did not create the Modbus pty pair")
            time.sleep(0.02)
        which = ["--slaves", ",".join(f"{a}:{wo}" for a, wo in self.slaves)]
        if self.layouts:
            block = self.workdir / "bus-slaves.json"
            block.write_text(json.dumps({"slaves": [{"address": a, "word_order": wo} for a, wo in self.slaves]
                                         + self.layouts}))
            which = ["--config", str(block)]
        self.slave = subprocess.Popen(
            [sys.executable, "-m", "hil.water_slave", "--port", dev, *which,
             "--seed", str(self.seed), "--now-ms", str(WATER_NOW_MS), "--mute-file", self.mute_file],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.slave)
        assert self.slave.stdout is not None
        ready, _, _ = select.select([self.slave.stdout], [], [], 30)
        line = self.slave.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            self.close()
            raise RigError(f"water slave did not come up: {line!r}")

    def mute(self, addresses: Sequence[int]) -> None:
        """These slaves stop answering (dead: the requests are on the bus, nobody answers); ()
        brings them back. The slave process reads the file at its next request."""
        tmp = self.mute_file + ".new"
        Path(tmp).write_text(",".join(str(a) for a in addresses))
        os.replace(tmp, self.mute_file)

    def unplug(self) -> None:
        """The bus adapter is pulled: socat and the slave stop, the agent's pty hangs up."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # socat removes its link; a stale one must not name a reused pty

    def values(self, sensor_of: dict[int, str]) -> list[tuple[str, tuple[Any, ...]]]:
        """The (sensor, fields) each served slave answers with (a fixed snapshot)."""
        from devices.water import codec

        out = []
        for addr, wo in self.slaves:
            if addr in sensor_of:
                fields = station(addr, codec.word_order_code(wo), self.seed).reading(addr, WATER_NOW_MS)
                out.append((sensor_of[addr], tuple(fields)))
        for slave in self.layouts:
            addr = slave["address"]
            if addr in sensor_of:
                entries = map_entries(slave)
                registers = bank(entries, station(addr, 0, self.seed).reading(addr, WATER_NOW_MS))
                out.append((sensor_of[addr], served(entries, registers)))
        return out

    def close(self) -> None:
        for proc in (getattr(self, "slave", None), self.socat):
            if proc is None:
                continue
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


class Subscriber:
    """paho on `<prefix>/<gw>/#` with a persistent session: every payload with its arrival time."""

    def __init__(self, port: int, prefix: str, gw: str) -> None:
        self.base = f"{prefix}/{gw}"
        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-sub-{gw}-{os.getpid()}",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise RigError("subscriber did not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.base + "/#", 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, leaf: str) -> list[bytes]:
        topic = f"{self.base}/{leaf}"
        with self.lock:
            return [p for _, t, p, _ in self.messages if t == topic]

    def statuses(self) -> list[tuple[float, dict[str, Any]]]:
        topic = f"{self.base}/status"
        with self.lock:
            msgs = [(t, p) for t, tp, p, _ in self.messages if tp == topic]
        return [(t, cbor2.loads(p)) for t, p in msgs]

    def publish(self, leaf: str, payload: bytes) -> None:
        self.client.publish(f"{self.base}/{leaf}", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _open_files(pid: int) -> set[str]:
    """What process `pid` has open (the targets of /proc/<pid>/fd)."""
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def _open_session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to `topic` for `client_id`, then leave."""
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_connect = lambda client, *a: client.subscribe(topic, 1)
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not done.wait(10):
            raise RigError(f"could not open the session of {client_id}")
    finally:
        c.disconnect()
        c.loop_stop()


def build_micropython_tree(config_path: Path, out: Path) -> Path:
    """The .mpy image a board would get (provisioning.firmware.build), for MICROPYPATH."""
    from provisioning.firmware import build

    build(config_path, out, progress=lambda _msg: None)
    return out


class AgentProcess:
    """The gateway agent as a subprocess under one interpreter; output goes to `log_path`."""

    def __init__(
        self, interpreter: str, config_path: Path, workdir: Path, *, heap: str = MICROPYTHON_HEAP
    ) -> None:
        if interpreter not in ALL_INTERPRETERS:
            raise ValueError(f"interpreter must be one of {ALL_INTERPRETERS}")
        self.interpreter = interpreter
        self.config_path = config_path
        self.workdir = workdir
        self.log_path = workdir / f"agent-{interpreter}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        if interpreter != "cpython":
            tree = self.tree = build_micropython_tree(config_path, workdir / "mpy")
            self.built = config_path.read_bytes()
            self.env["MICROPYPATH"] = f".frozen:{tree}"
            try:
                exe = micropython32_binary() if interpreter == "micropython32" else micropython_binary()
            except ServiceError as exc:
                raise RigError(str(exc)) from None
            # nohup: SIGHUP ignored, as docs/gateway.md says to run the unix port. It opens ttys
            # without O_NOCTTY, so an agent that leads its session (systemd, setsid) takes its
            # first serial port as controlling terminal and is killed by SIGHUP when that adapter
            # is pulled; ignored, the hang-up is only the EOF that the agent reopens the port on.
            # The image's config.json, as a board boots it: beside it the config.checked that
            # build wrote, so the agent starts without loading edge.config (edge/checked.py).
            self.cmd = [find_binary("nohup"), exe, "-X", f"heapsize={heap}", "-m", "edge.main",
                        str(tree / "config.json")]
            self.cwd = str(workdir)
        else:
            self.cmd = [sys.executable, "-m", "citybrain.cli", "gateway", "run", "--config", str(config_path)]
            self.cwd = str(ROOT)
        self.starts = 0

    def start(self) -> None:
        if self.interpreter != "cpython" and self.config_path.read_bytes() != self.built:
            # The test changed the config: build the image again, as a tech does before a flash
            # (the image's config.checked is the config the unix port boots from).
            build_micropython_tree(self.config_path, self.tree)
            self.built = self.config_path.read_bytes()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL now (a power cut); returns the wall time of the kill."""
        assert self.proc is not None
        t = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return t

    def stop(self) -> int | None:
        """SIGTERM: a clean stop (log synced, offline status); the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Rig:
    """Everything for one run. Options: interpreter, speeds, which devices, fault modes.

    `run(seconds)` drives the simulators in this thread (a tick every `tick_s`); fault injection
    happens between runs. `drain()` waits for the backlog, `verify()` judges the record.
    """

    def __init__(
        self,
        interpreter: str = "cpython",
        *,
        gw: str = "gw-hil-1",
        parking: int = 4,
        thermometers: int = 2,
        lids: int = 2,
        water: Sequence[tuple[int, str]] = ((1, "ABCD"), (2, "CDAB")),
        water_layouts: Sequence[Mapping[str, Any]] = (),
        dead_slave: int | None = None,
        garbage_device: bool = False,
        parking_fault: tuple[str, float] | None = None,
        speed: float = 10.0,
        sync_every_ms: int = 500,
        batch_age_ms: int = 300,
        status_every_s: int = 1,
        poll_ms: int = 400,
        seed: int = 1,
        tick_s: float = 0.02,
        heap: str = MICROPYTHON_HEAP,
        workdir: str | None = None,
        receipts: bool = False,
        receipt_timeout_ms: int = 3000,
        broker_options: dict[str, Any] | None = None,
        broker_port: int | None = None,
        agent_brokers: Sequence[int] = (),
        broker: Mosquitto | None = None,
        uplink_port: int | None = None,
    ) -> None:
        """`broker`: a Mosquitto shared with other rigs (a city block, hil/block.py), started and
        stopped by its owner; None: this rig starts its own. `uplink_port`: where the agent's
        uplink connects instead of the broker (a proxy the rig controls, hil/link.py); the site
        broker (lids) stays direct."""
        self.interpreter = interpreter
        self.gw = gw
        self.sync_every_ms = sync_every_ms
        self.tick_s = tick_s
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="citybrain-hil-"))
        self.emissions: list[Emission] = []
        self.outages: list[Outage] = []
        self._killed_at: float | None = None
        self._booted: set[Any] = set()  # boots seen before the last (re)start
        self._starting = False  # begin_start_agent called, new boot not online yet
        self.devices: list[SerialDevice] = []
        self.lids: LidPublisher | None = None
        self.bus: ModbusBus | None = None
        self.sub: Subscriber | None = None
        self.agent: AgentProcess | None = None
        # broker_port: an MQTT listener the caller runs (a NATS node's, say); `broker`: a Mosquitto
        # shared with other rigs; either way the rig does not start, restart or stop it. Otherwise
        # the rig's own Mosquitto (with broker_options). agent_brokers: the agent's broker endpoints
        # (its config's broker.port, then broker.endpoints), if not that one.
        self._own_broker = broker is None and broker_port is None
        self.broker = broker if broker is not None else Mosquitto(
            broker_port, workdir=str(self.dir / "mosquitto"), **(broker_options or {}))
        self._closed = False
        self._procs: list[subprocess.Popen[bytes]] = []  # everything started, to prove it is gone
        try:
            if self._own_broker:
                self._start_broker()
            sources: list[dict[str, Any]] = []
            if parking:
                ids = [f"P-{100 + i:05d}" for i in range(parking)]
                psim = ParkingSim(ids, seed=seed, heartbeat_s=5, mean_stay_s=20, mean_vacant_s=15,
                                  link="rs485")
                if parking_fault:
                    psim.set_fault(parking_fault[0], parking_fault[1])
                self.devices.append(SerialDevice("parking", ids, psim, speed=speed, seed=seed,
                                                 link=self._link()))
            if thermometers:
                ids = [f"T-gate-{i + 1}" for i in range(thermometers)]
                tsim = ThermometerSim(ids, seed=seed + 1, mean_gap_s=4.0, fever_rate=0.05)
                self.devices.append(SerialDevice("thermometer", ids, tsim, speed=speed, seed=seed,
                                                 link=self._link()))
            if garbage_device:
                self.devices.append(SerialDevice("parking", ["P-09999"], None, noise=16, seed=seed + 7))
            for d in self.devices:
                sources.append({"kind": d.kind, "transport": "serial", "port": d.path, "sensors": d.sensors,
                                "max_silence_s": 0})
            self.water_sensors: dict[int, str] = {}
            if water or water_layouts:
                self.bus = ModbusBus(self.dir, water, seed=seed + 3, layouts=water_layouts)
                self._procs += [self.bus.socat, self.bus.slave]
                slaves: list[dict[str, Any]] = []
                for addr, _wo in water:
                    self.water_sensors[addr] = f"W-{addr:02d}"
                    slaves.append({"address": addr, "sensor": self.water_sensors[addr], "word_order": _wo})
                for layout in water_layouts:  # vendor register maps: the entry as the config has it
                    self.water_sensors[layout["address"]] = layout["sensor"]
                    slaves.append(dict(layout))
                if dead_slave is not None:
                    slaves.append({"address": dead_slave, "sensor": f"W-dead-{dead_slave}"})
                sources.append({"kind": "water", "transport": "modbus", "port": self.bus.path,
                                "slaves": slaves, "poll_ms": poll_ms, "timeout_ms": 150, "max_silence_s": 0})
            site_topic = f"site/{gw}/lids"
            if lids:
                ids = [f"MH-{i + 1:03d}" for i in range(lids)]
                # The agent's site session exists before it first boots, as on a deployed site: the
                # broker queues lid messages for it while it is down (clean_session=False, QoS 1).
                _open_session(self.broker.port, gw + "-site", site_topic + "/#")
                self.lids = LidPublisher(self.broker.port, site_topic, ids, seed=seed + 5, gw=gw,
                                         interval_s=max(0.02, 1.0 / speed))
                sources.append({"kind": "manhole", "transport": "mqtt", "topic": site_topic + "/#",
                                "sensors": ids, "max_silence_s": 0})
            broker_conf: dict[str, Any] = {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 10}
            uplink: dict[str, Any] = {**broker_conf, "port": uplink_port or self.broker.port}
            if agent_brokers:
                uplink = {**broker_conf, "port": agent_brokers[0],
                          "endpoints": [f"127.0.0.1:{p}" for p in agent_brokers[1:]]}
            self.config = {
                "gateway_id": gw,
                "prefix": PREFIX,
                "broker": uplink,
                "site_broker": dict(broker_conf),
                "trust_os_clock": True,
                "store": {"dir": str(self.spool()), "sync_every_ms": sync_every_ms,
                          "segment_bytes": 16384},
                "uplink": {"batch_age_ms": batch_age_ms, "status_every_s": status_every_s,
                           "backoff_base_ms": 200, "backoff_cap_ms": 1000, "batch_max": 40,
                           # Off unless a collector runs beside the rig (no one else receipts).
                           "receipts": receipts, "receipt_timeout_ms": receipt_timeout_ms},
                "sources": sources,
            }
            self.config_path = self.dir / "gateway.json"
            self.config_path.write_text(json.dumps(self.config, indent=2))
            self.sub = Subscriber(self.broker.port, PREFIX, gw)
            self.agent = AgentProcess(interpreter, self.config_path, self.dir, heap=heap)
        except BaseException:
            self.close()
            raise

    def _link(self) -> str:
        """A stable name for the next serial device's pty, as udev's /dev/serial/by-id gives."""
        return str(self.dir / f"tty-{len(self.devices)}")

    # -- driving -----------------------------------------------------------------------------

    def _record(self, e: Emission) -> None:
        self.emissions.append(e)

    def run(self, seconds: float) -> None:
        """Let the sensors talk for `seconds` of real time (the agent may be up or down)."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            live = self.agent is not None and self.agent.alive()
            for d in self.devices:
                d.step(now, live, self._record)
            if self.lids is not None:
                self.lids.step(now, True, self._record)  # the site broker holds them for the agent
            proc = self.agent.proc if self.agent is not None else None
            if proc is not None and not live and self._killed_at is None:
                assert self.agent is not None
                raise RigError(f"agent exited with {proc.returncode}: {self.agent.log_tail()}")
            if now >= end:
                return
            time.sleep(self.tick_s)

    def start_agent(self, timeout: float = 30.0) -> None:
        """(Re)start the agent and wait until its new boot says online (runs the sims meanwhile)."""
        self.begin_start_agent()
        deadline = time.monotonic() + timeout
        while not self.came_online():
            assert self.agent is not None
            if time.monotonic() > deadline or not self.agent.alive():
                raise RigError(f"agent did not come online: {self.agent.log_tail()}")
            self.run(0.05)

    def begin_start_agent(self) -> None:
        """(Re)start the agent without waiting; `came_online()` says when its new boot is online.
        (A block of gateways keeps the other gateways' sensors talking meanwhile.)"""
        assert self.agent is not None and self.sub is not None
        self._booted = {s.get("boot") for _, s in self.sub.statuses()}
        if self._killed_at is None:
            # A boot: frames sent before the agent opens its ports are not expected (a tty is
            # flushed when it is set raw), so the time until it is online counts as down.
            self._killed_at = time.time()
        self.agent.start()
        self._starting = True
        if self.agent.proc is not None:
            self._procs.append(self.agent.proc)

    def came_online(self) -> bool:
        """After `begin_start_agent`: True once the new boot's online status arrived (the outage
        since the kill or start is then recorded for the verifier)."""
        assert self.sub is not None
        if not self._starting:
            return self._killed_at is None  # False between a kill and the next start
        for t, s in self.sub.statuses():
            if s.get("state") == "online" and s.get("boot") not in self._booted:
                if self._killed_at is not None:
                    self.outages.append(Outage(self._killed_at, t))
                    self._killed_at = None
                self._starting = False
                return True
        return False

    def kill_agent(self) -> float:
        """A power cut: SIGKILL, whatever the agent is doing (maybe appending to its log)."""
        assert self.agent is not None
        self._killed_at = self.agent.kill()
        return self._killed_at

    def spool(self) -> Path:
        """The agent's store directory (its log segments and state file)."""
        return self.dir / "spool"

    def tear_log_tail(
        self, rng: random.Random, mode: str = "truncate", *, max_age_s: float | None = None
    ) -> TornWrite | None:
        """After a kill: damage the newest record of the active segment as a power cut mid-append
        would, so that the next boot's recovery must cut it (docs/hil.md, "Torn writes").

        truncate: the segment ends at a random byte strictly inside the record (its first bytes
        reached flash, the rest did not). garbage: 1-4 random bytes of the record are overwritten
        with other values (a page programmed half-way). None, and nothing touched, if the active
        segment holds no complete record (just rolled, or already torn by the kill) or if its
        newest record was written more than `max_age_s` before the kill (not the one being
        written when the power failed).
        """
        if mode not in TEAR_MODES:
            raise ValueError(f"mode must be one of {TEAR_MODES}")
        assert self.agent is not None and not self.agent.alive() and self._killed_at is not None
        # The active segment of each of the two logs (periodic, and events/ for events and
        # alarms: docs/store.md "Two logs"); the one written last is the one the cut hit.
        active = [max(segs) for segs in (list(self.spool().glob("seg-*.log")),
                                         list(self.spool().glob("events/seg-*.log"))) if segs]
        if not active:
            return None
        path = max(active, key=lambda p: p.stat().st_mtime_ns)
        data = path.read_bytes()
        found = last_record(data)
        if found is None or found[2] != len(data):
            return None
        start, end, _ = found
        age = self._killed_at - path.stat().st_mtime
        if max_age_s is not None and age > max_age_s:
            return None
        garbled: tuple[int, ...] = ()
        cut_at = -1
        if mode == "truncate":
            cut_at = rng.randint(start + 1, end - 1)
            os.truncate(path, cut_at)
        else:
            garbled = tuple(sorted(rng.sample(range(start, end), rng.randint(1, min(4, end - start)))))
            buf = bytearray(data)
            for off in garbled:
                buf[off] ^= rng.randint(1, 255)  # never 0: every chosen byte really changes
            with open(path, "r+b") as f:
                f.seek(start)
                f.write(buf[start:end])
        return TornWrite(mode, str(path.relative_to(self.spool())), start, end, cut_at, garbled, age,
                         bytes(data[start + HEADER : end]), bytes(data[:start]))

    def unplug(self, timeout: float = 10.0) -> None:
        """Pull every serial adapter and the Modbus bus's adapter (the agent keeps running). The
        devices fall silent first and are pulled once the agent has read what they wrote (or after
        `timeout`): a frame written but still unread when the pty goes is recorded as emitted, yet no
        agent could ever read it, and the verifier would count it lost."""
        serial = [d for d in self.devices if d.link is not None]
        for d in serial:
            d.plugged = False
        deadline = time.monotonic() + timeout
        while any(d.unread() for d in serial) and time.monotonic() < deadline:
            self.run(0.05)
        for d in self.devices:
            if d.link is not None:
                d.unplug()
        if self.bus is not None:
            self.bus.unplug()

    def replug(self, timeout: float = 30.0) -> float:
        """Plug them back: new ptys under the same names, as udev's by-id links do. Returns once
        the agent holds every new pty open (its reopen found it; the bus's too, so polls resume
        from here) and has set each serial one up, when each device starts to talk again; the time
        between is an outage for the verifier. Returns that time."""
        assert self.agent is not None and self.agent.proc is not None
        waiting = [d for d in self.devices if d.link is not None and not d.plugged]
        for d in waiting:
            d.replug()
        if self.bus is not None:
            self.bus.plug()
        bus_tty = os.path.realpath(self.bus.path) if self.bus is not None else None
        deadline = time.monotonic() + timeout
        pid = self.agent.proc.pid
        while True:
            held = _open_files(pid)
            # Open is not enough: setting the tty raw just after discards what is unread (set_up).
            waiting = [d for d in waiting if d.tty not in held or not d.set_up()]
            if bus_tty in held:
                bus_tty = None
            if not waiting and bus_tty is None:
                break
            if time.monotonic() > deadline:
                names = [d.link for d in waiting] + ([self.bus.path] if self.bus and bus_tty else [])
                raise RigError(f"the agent did not reopen {names}: {self.agent.log_tail()}")
            self.run(0.05)
        for d in self.devices:
            d.plugged = True
        return time.time()

    def restart_broker(self) -> None:
        """Mosquitto stops cleanly (sessions saved) and comes back on the same port and data dir."""
        self.broker.stop()
        self._start_broker()

    def _start_broker(self) -> None:
        if not self._own_broker:
            return
        self.broker.start()
        if self.broker.proc is not None:
            self._procs.append(self.broker.proc)

    def drain(self, timeout: float = 20.0, quiet_s: float = 1.0) -> None:
        """Stop the sensors; wait until every expected reading arrived (or `timeout`), then `quiet_s`
        more so that late duplicates are seen too. The agent keeps polling Modbus meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.verify()
            if all(k.lost == 0 for k in report.kinds.values()):
                break
            time.sleep(0.2)
        time.sleep(quiet_s)

    def last_status(self) -> dict[str, Any] | None:
        assert self.sub is not None
        sts = [s for _, s in self.sub.statuses() if s.get("state") == "online"]
        return sts[-1] if sts else None

    def retained_status(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The status a newcomer gets: a fresh clean-session subscriber reads the retained message."""
        got: list[bytes] = []
        done = threading.Event()
        topic = f"{PREFIX}/{self.gw}/status"

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.retain:
                got.append(bytes(msg.payload))
                done.set()

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-probe-{self.gw}-{os.getpid()}")
        c.on_connect = lambda client, *a: client.subscribe(topic, 1)
        c.on_message = on_message
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        try:
            done.wait(timeout)
        finally:
            c.disconnect()
            c.loop_stop()
        if not got:
            return None
        status: dict[str, Any] = cbor2.loads(got[0])
        return status

    def command(self, payload: bytes, cmd_id: str | None, timeout: float = 10.0,
                step: bool = True) -> dict[str, Any]:
        """Publish a raw command payload; the reply with `cmd_id` (None: the first reply after it).
        `step` False: wait without running the devices (after a run's sensors have stopped)."""
        assert self.sub is not None
        before = len(self.sub.payloads("reply"))
        self.sub.publish("cmd", payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.sub.payloads("reply")[before:]:
                reply: dict[str, Any] = cbor2.loads(p)
                if cmd_id is None or reply.get("id") == cmd_id:
                    return reply
            if step:
                self.run(0.05)
            else:
                time.sleep(0.05)
        raise RigError(f"no reply to command {cmd_id!r}")

    # -- judging -----------------------------------------------------------------------------

    def verify(self) -> Report:
        assert self.sub is not None
        polled = {}
        if self.bus is not None:
            polled["water"] = self.bus.values(self.water_sensors)
        return verify(self.emissions, self.sub.payloads("up"), outages=self.outages,
                      sync_every_ms=self.sync_every_ms, polled=polled)

    def save(self, path: str) -> None:
        """The run as JSON for `python -m hil.verify` (payloads hex)."""
        assert self.sub is not None
        polled = {"water": self.bus.values(self.water_sensors)} if self.bus is not None else {}
        data = {
            "emissions": [{"t": e.t, "sensor": e.sensor, "kind": e.kind, "fields": e.fields}
                          for e in self.emissions],
            "up": [p.hex() for p in self.sub.payloads("up")],
            "outages": [{"killed": o.killed, "back": o.back} for o in self.outages],
            "sync_every_ms": self.sync_every_ms,
            "polled": polled,
        }
        Path(path).write_text(json.dumps(data))

    # -- teardown ----------------------------------------------------------------------------

    def stop_agent(self) -> int | None:
        return self.agent.stop() if self.agent is not None else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.agent is not None:
            self.agent.stop()
        if self.lids is not None:
            self.lids.close()
        if self.sub is not None:
            self.sub.close()
        if self.bus is not None:
            self.bus.close()
        for d in self.devices:
            d.close()
        if self._own_broker:
            self.broker.stop()
        if self._own_dir:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """PIDs of processes this rig started that still exist (after close: must be none)."""
        out = []
        for proc in self._procs + (self.bus.procs if self.bus is not None else []):
            if proc.poll() is None:
                out.append(proc.pid)
        return out

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    from hil import scenarios

    return scenarios.main(argv)


__all__ = ["Rig", "RigError", "ServiceError", "TornWrite", "main"]

if __name__ == "__main__":
    sys.exit(main())
