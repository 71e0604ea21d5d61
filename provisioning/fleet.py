"""The fleet registry: every gateway, its site, its sources and its credentials' hash.

`fleet.json` holds no cleartext secret: a gateway's password lives in `secrets/<id>.password`
(mode 0600) until it is baked into that gateway's config, and only its hash goes to the broker.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.credentials import mosquitto_hash, new_password

GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FleetError(ValueError):
    """A registry problem a field tech can fix; the message says how."""


@dataclass
class Gateway:
    id: str
    site: str = ""
    district: str = ""
    password_hash: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # any other gateway config keys (store, uplink)


@dataclass
class Fleet:
    dir: Path
    prefix: str = "city"
    broker: dict[str, Any] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.dir / "fleet.json"

    @property
    def secrets_dir(self) -> Path:
        return self.dir / "secrets"

    @classmethod
    def create(cls, directory: str | Path, *, broker_host: str, broker_port: int, tls: bool,
               prefix: str = "city") -> Fleet:
        d = Path(directory)
        if (d / "fleet.json").exists():
            raise FleetError(f"{d / 'fleet.json'} exists already: refusing to overwrite a fleet")
        fleet = cls(dir=d, prefix=prefix, broker={"host": broker_host, "port": broker_port, "tls": tls})
        fleet.save()
        return fleet

    @classmethod
    def load(cls, directory: str | Path) -> Fleet:
        d = Path(directory)
        try:
            raw = json.loads((d / "fleet.json").read_text())
        except FileNotFoundError:
            raise FleetError(f"no fleet at {d}: run `citybrain provision init --dir {d}` first") from None
        except json.JSONDecodeError as exc:
            raise FleetError(f"{d / 'fleet.json'} is not valid JSON: {exc}") from None
        gateways = {
            gid: Gateway(id=gid, site=g.get("site", ""), district=g.get("district", ""),
                         password_hash=g.get("password_hash", ""), sources=g.get("sources", []),
                         extra=g.get("extra", {}))
            for gid, g in raw.get("gateways", {}).items()
        }
        return cls(dir=d, prefix=raw.get("prefix", "city"), broker=raw["broker"], gateways=gateways)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        raw = {
            "prefix": self.prefix,
            "broker": self.broker,
            "gateways": {
                gid: {"site": g.site, "district": g.district, "password_hash": g.password_hash,
                      "sources": g.sources, "extra": g.extra}
                for gid, g in sorted(self.gateways.items())
            },
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)

    def add_gateway(self, gid: str, *, site: str = "", district: str = "",
                    sources: list[dict[str, Any]] | None = None) -> str:
        """Register a gateway and return its new cleartext password (also kept in secrets/)."""
        if not GATEWAY_ID.match(gid):
            raise FleetError(
                f"gateway id {gid!r}: use 1-64 letters, digits, '-', '_' or '.'"
                " (it becomes an MQTT topic level)"
            )
        if gid in self.gateways:
            raise FleetError(f"gateway {gid} exists: use `rotate-password` to issue new credentials")
        password = new_password()
        self.gateways[gid] = Gateway(id=gid, site=site, district=district,
                                     password_hash=mosquitto_hash(password), sources=sources or [])
        self._write_secret(gid, password)
        return password

    def rotate_password(self, gid: str) -> str:
        gw = self.gateway(gid)
        password = new_password()
        gw.password_hash = mosquitto_hash(password)
        self._write_secret(gid, password)
        return password

    def gateway(self, gid: str) -> Gateway:
        try:
            return self.gateways[gid]
        except KeyError:
            known = ", ".join(sorted(self.gateways)) or "none"
            raise FleetError(f"unknown gateway {gid!r} (known: {known})") from None

    def password(self, gid: str) -> str:
        try:
            return (self.secrets_dir / f"{gid}.password").read_text().strip()
        except FileNotFoundError:
            raise FleetError(
                f"no secret for {gid} in {self.secrets_dir}:"
                f" run `citybrain provision rotate-password --id {gid}`"
            ) from None

    def _write_secret(self, gid: str, password: str) -> None:
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.secrets_dir / f"{gid}.password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
