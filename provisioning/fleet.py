"""The fleet registry: the broker, every gateway and every service account, with roles and hashes.

`fleet.json` holds no cleartext secret: a gateway's password lives in `secrets/<id>.password`, a
service account's in `secrets/service/<name>.password` (0600, in 0700 folders), and only hashes go
to the broker. A `.gitignore` beside it keeps `secrets/` and `out/` out of any commit.

Names: a gateway id is its MQTT username and its topic level. Service accounts (collector,
operator) have their own names with an explicit role; a gateway id may never be a service account's
name or a reserved word, so no rule meant for one kind of account can reach the other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.credentials import mosquitto_hash, new_password
from provisioning.files import private_dir, write_atomic

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A gateway id: a NAME without `.` (nats-server 2.9's MQTT refuses a `.` in a topic, docs/protocol.md);
# `:` is not in NAME either, as it separates the name in Mosquitto's password file.
GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Written into the ACL and the broker's config: no spaces, line breaks, MQTT wildcards or `$`.
PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
LISTEN = re.compile(r"^[A-Za-z0-9_.:-]+$")
CONF_DIR = re.compile(r"^/[A-Za-z0-9_.@+/-]*$")

# What each service role may do on the broker (topics under the fleet prefix). The collector reads
# everything gateways send, also through MQTT 5 shared subscriptions, and writes each gateway's
# receipts (`ack`); the operator sends commands and reads their replies and the gateways' status.
ROLES: dict[str, tuple[tuple[str, str], ...]] = {
    "collector": (
        ("read", "+/up"), ("read", "+/alarm"), ("read", "+/status"),
        ("read", "$share/+/{p}/+/up"), ("read", "$share/+/{p}/+/alarm"), ("read", "$share/+/{p}/+/status"),
        ("write", "+/ack"),
    ),
    "operator": (("write", "+/cmd"), ("read", "+/reply"), ("read", "+/status")),
}
# Never a gateway id: role names and the accounts a broker host commonly has.
RESERVED = frozenset({*ROLES, "admin", "root", "mosquitto", "citybrain", "citybrain-collector"})

# Gateway config keys the registry manages itself: `--options` may not set them.
MANAGED_KEYS = frozenset({"gateway_id", "prefix", "site", "broker", "site_broker", "sources"})
# Per-gateway broker settings that may differ from the fleet's; credentials never do, and the CA
# is the fleet's (one ca.pem ships with every config).
BROKER_KEYS = ("host", "port", "tls", "keepalive_s")

GITIGNORE = (
    "# Written by `citybrain provision`: cleartext passwords and rendered configs never go into git.\n"
    "secrets/\nout/\n"
)

CLIENT_CERT = "client.crt"  # a gateway's TLS client certificate and key, beside its config.json
CLIENT_KEY = "client.key"
_FLEET_KEYS = {"prefix", "broker", "broker_server", "service_users", "gateways"}
_GATEWAY_KEYS = {"site", "district", "password_hash", "sources", "extra", "broker", "site_broker"}


class FleetError(ValueError):
    """A registry problem a field tech can fix; the message says how."""


@dataclass
class Gateway:
    id: str
    site: str = ""
    district: str = ""
    password_hash: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other gateway config keys (store, uplink, ...)
    broker: dict[str, Any] = field(default_factory=dict)  # overrides of the fleet's broker (no credentials)
    site_broker: dict[str, Any] | None = None  # the local broker MQTT sensors (manhole lids) publish to


@dataclass
class ServiceUser:
    name: str
    role: str
    password_hash: str


@dataclass
class Fleet:
    dir: Path
    prefix: str = "city"
    broker: dict[str, Any] = field(default_factory=dict)
    # The broker host's side: where the generated files live there and which address it listens on.
    broker_server: dict[str, Any] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    service_users: dict[str, ServiceUser] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.dir / "fleet.json"

    @property
    def secrets_dir(self) -> Path:
        return self.dir / "secrets"

    @property
    def ca_path(self) -> Path:
        """The fleet's copy of the CA certificate gateways verify the broker with (public, PEM)."""
        return self.dir / "ca.pem"

    # -- load / save ----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path, *, broker_host: str, broker_port: int, tls: bool,
               prefix: str = "city", broker_server: dict[str, Any] | None = None,
               ca_file: Path | None = None, ca_path: str | None = None) -> Fleet:
        """A new fleet, everything checked before the first file is written (a refused `init` can
        simply be run again)."""
        d = Path(directory)
        if (d / "fleet.json").exists():
            raise FleetError(f"{d / 'fleet.json'} exists already: refusing to overwrite a fleet")
        fleet = cls(dir=d, prefix=prefix, broker={"host": broker_host, "port": broker_port, "tls": tls},
                    broker_server=dict(broker_server or {}))
        fleet.check()
        pem = read_ca(ca_file) if ca_file else None
        if pem is not None:
            fleet.broker["ca_file"] = ca_path or "ca.pem"
        fleet.save()
        if pem is not None:
            write_atomic(fleet.ca_path, pem)
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
        _known(raw, _FLEET_KEYS, "fleet.json")
        gateways = {}
        for gid, g in raw.get("gateways", {}).items():
            _known(g, _GATEWAY_KEYS, f"fleet.json gateways.{gid}")
            gateways[gid] = Gateway(
                id=gid, site=g.get("site", ""), district=g.get("district", ""),
                password_hash=g.get("password_hash", ""), sources=g.get("sources", []),
                extra=g.get("extra", {}), broker=g.get("broker", {}), site_broker=g.get("site_broker"))
        users = {}
        for name, u in raw.get("service_users", {}).items():
            _known(u, {"role", "password_hash"}, f"fleet.json service_users.{name}")
            if u["role"] not in ROLES:
                raise FleetError(f"fleet.json service_users.{name}.role: {u['role']!r} is not one of"
                                 f" {', '.join(ROLES)}")
            users[name] = ServiceUser(name=name, role=u["role"], password_hash=u["password_hash"])
        fleet = cls(dir=d, prefix=raw.get("prefix", "city"), broker=raw["broker"],
                    broker_server=raw.get("broker_server", {}), gateways=gateways, service_users=users)
        fleet.check()
        return fleet

    def check(self) -> None:
        """What goes verbatim into the broker's ACL and config must not be able to add lines there."""
        if not PREFIX.match(self.prefix):
            raise FleetError(f"prefix {self.prefix!r}: topic levels of letters, digits, '-', '_', '.'"
                             " separated by '/' (no spaces, '+', '#' or '$')")
        listen = self.broker_server.get("listen")
        if listen is not None and not LISTEN.match(listen):
            raise FleetError(f"listen address {listen!r}: an IP address or a host name")
        conf_dir = self.broker_server.get("conf_dir")
        if conf_dir is not None and not CONF_DIR.match(conf_dir):
            raise FleetError(f"conf dir {conf_dir!r}: an absolute path without spaces")
        unknown = set(self.broker_server) - {"listen", "conf_dir", "require_client_cert"}
        if unknown:
            key = sorted(unknown)[0]
            raise FleetError(f"fleet.json broker_server: unknown key {key!r}"
                             " (known: conf_dir, listen, require_client_cert)")
        if self.broker_server.get("require_client_cert") and not (self.broker.get("tls")
                                                                  and self.ca_path.exists()):
            raise FleetError("client certificates need TLS and the fleet CA: run `tls-init` first")

    def save(self) -> None:
        self.check()
        self.dir.mkdir(parents=True, exist_ok=True)
        gitignore = self.dir / ".gitignore"
        if not gitignore.exists():
            write_atomic(gitignore, GITIGNORE)
        raw: dict[str, Any] = {"prefix": self.prefix, "broker": self.broker}
        if self.broker_server:
            raw["broker_server"] = self.broker_server
        raw["service_users"] = {
            u.name: {"role": u.role, "password_hash": u.password_hash}
            for u in sorted(self.service_users.values(), key=lambda u: u.name)
        }
        gws: dict[str, Any] = {}
        for gid, g in sorted(self.gateways.items()):
            entry: dict[str, Any] = {"site": g.site, "district": g.district, "password_hash": g.password_hash,
                                     "sources": g.sources, "extra": g.extra}
            if g.broker:
                entry["broker"] = g.broker
            if g.site_broker is not None:
                entry["site_broker"] = g.site_broker
            gws[gid] = entry
        raw["gateways"] = gws
        # Hashes only, but private all the same: a service password may be a person's choice.
        write_atomic(self.path, json.dumps(raw, indent=2, ensure_ascii=False) + "\n", private=True)

    # -- gateways -------------------------------------------------------------------------------

    def check_name_free(self, name: str, *, what: str) -> None:
        if not (GATEWAY_ID if what == "gateway id" else NAME).match(name):
            dot = "" if what == "gateway id" else " or '.'"
            raise FleetError(
                f"{what} {name!r}: use 1-64 letters, digits, '-'{',' if dot else ' or'} '_'{dot}"
                " (it becomes an MQTT username and topic level)"
            )
        if name in self.gateways:
            hint = ": use `rotate-password` to issue new credentials" if what == "gateway id" else ""
            raise FleetError(f"gateway {name!r} exists already{hint}")
        if name in self.service_users:
            role = self.service_users[name].role
            raise FleetError(f"{name!r} is a service account ({role}): pick another name")
        if what == "gateway id" and name in RESERVED:
            raise FleetError(f"gateway id {name!r} is reserved for service accounts: pick another id")

    def add_gateway(self, gid: str, *, site: str = "", district: str = "",
                    sources: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
                    site_broker: dict[str, Any] | None = None) -> str:
        """Register a gateway and return its new cleartext password (also kept in secrets/).

        The gateway's config is checked with the agent's own validator first: a mistake is refused
        here, naming the key, and nothing is registered.
        """
        self.check_name_free(gid, what="gateway id")
        gw = Gateway(id=gid, site=site, district=district, sources=sources or [], extra=extra or {},
                     site_broker=site_broker)
        self.gateways[gid] = gw
        try:
            self.check_gateway(gid)
        except FleetError:
            del self.gateways[gid]
            raise
        password = new_password()
        gw.password_hash = mosquitto_hash(password)
        self._write_secret(self._secret_path(gid), password)
        return password

    def edit_gateway(self, gid: str, **changes: Any) -> list[str]:
        """Apply `changes` (site, district, sources, extra, broker, site_broker) if the result is a
        config the agent accepts; returns the names of the fields that changed."""
        gw = self.gateway(gid)
        before = {k: getattr(gw, k) for k in changes}
        for k, v in changes.items():
            if not hasattr(gw, k) or k in ("id", "password_hash"):
                raise FleetError(f"edit-gateway: {k} cannot be edited")
            setattr(gw, k, v)
        try:
            self.check_gateway(gid)
        except FleetError:
            for k, v in before.items():
                setattr(gw, k, v)
            raise
        return [k for k in changes if before[k] != changes[k]]

    def remove_gateway(self, gid: str) -> None:
        """Forget a gateway and delete its secrets; the next `render` drops it from passwd and ACL,
        and its client certificate (if any) is revoked: it goes on the CRL render ships."""
        self.gateway(gid)
        self._revoke_client_cert(gid)
        del self.gateways[gid]
        for path in (self._secret_path(gid), self._secret_path(gid, "site-broker"),
                     self.client_key_path(gid), self.client_cert_path(gid)):
            path.unlink(missing_ok=True)

    def rotate_password(self, gid: str) -> str:
        gw = self.gateway(gid)
        password = new_password()
        gw.password_hash = mosquitto_hash(password)
        self._write_secret(self._secret_path(gid), password)
        return password

    def gateway(self, gid: str) -> Gateway:
        try:
            return self.gateways[gid]
        except KeyError:
            known = ", ".join(sorted(self.gateways)) or "none"
            raise FleetError(f"unknown gateway {gid!r} (known: {known})") from None

    def password(self, gid: str) -> str:
        try:
            return self._secret_path(gid).read_text().strip()
        except FileNotFoundError:
            raise FleetError(
                f"no secret for {gid} in {self.secrets_dir}:"
                f" run `citybrain provision rotate-password --dir {self.dir} --id {gid}`"
            ) from None

    def set_site_broker_password(self, gid: str, password: str | None) -> None:
        path = self._secret_path(gid, "site-broker")
        if password is None:
            path.unlink(missing_ok=True)
        else:
            self._write_secret(path, password)

    def broker_for(self, gid: str) -> dict[str, Any]:
        """The gateway's broker block without credentials: the fleet's, with its own overrides."""
        return dict(self.broker, **self.gateway(gid).broker)

    def config_for(self, gid: str, password: str) -> dict[str, Any]:
        """The gateway's config.json as the agent reads it (not validated: see check_gateway)."""
        gw = self.gateway(gid)
        raw: dict[str, Any] = {
            "gateway_id": gid,
            "prefix": self.prefix,
            # Credentials come last: no override or option can replace them.
            "broker": dict(self.broker_for(gid), username=gid, password=password),
            "sources": gw.sources,
        }
        if self.has_client_cert(gid):  # `tls-client`: render puts both files beside config.json
            raw["broker"].update(certfile=CLIENT_CERT, keyfile=CLIENT_KEY)
        if gw.site:
            raw["site"] = gw.site
        if gw.site_broker is not None:
            sb = dict(gw.site_broker)
            secret = self._secret_path(gid, "site-broker")
            if secret.exists():
                sb["password"] = secret.read_text().strip()
            raw["site_broker"] = sb
        for key, value in gw.extra.items():
            if key in MANAGED_KEYS:
                raise FleetError(f"gateway {gid}: option {key!r} is managed by the registry"
                                 " (use edit-gateway / set-broker / --site-broker instead)")
            raw[key] = value
        return raw

    def check_gateway(self, gid: str) -> dict[str, Any]:
        """Run the agent's own validator (edge.config.validate) on the gateway's config; a mistake
        is a FleetError naming the gateway and the key's path (e.g. `config.sources[0].port`)."""
        from edge import config as edge_config

        try:
            checked: dict[str, Any] = edge_config.validate(self.config_for(gid, "(checked at the desk)"))
            return checked
        except edge_config.ConfigError as exc:
            raise FleetError(f"gateway {gid}: {exc}") from None

    # -- service accounts -------------------------------------------------------------------------

    def add_service_user(self, name: str, role: str, password: str | None = None) -> str:
        """Register a broker account for a service with an explicit role; returns its password
        (given, or a new random one), kept in secrets/service/<name>.password."""
        if role not in ROLES:
            raise FleetError(f"role {role!r}: one of {', '.join(ROLES)}")
        self.check_name_free(name, what="service account")
        password = password or new_password()
        self.service_users[name] = ServiceUser(name=name, role=role, password_hash=mosquitto_hash(password))
        self._write_secret(self.service_secret_path(name), password)
        return password

    def rotate_service_password(self, name: str, password: str | None = None) -> str:
        user = self.service_user(name)
        password = password or new_password()
        user.password_hash = mosquitto_hash(password)
        self._write_secret(self.service_secret_path(name), password)
        return password

    def remove_service_user(self, name: str) -> None:
        self.service_user(name)
        self._revoke_client_cert(name)
        del self.service_users[name]
        for path in (self.service_secret_path(name), self.client_key_path(name), self.client_cert_path(name)):
            path.unlink(missing_ok=True)

    def client_key_path(self, name: str) -> Path:
        """The private key of an account's TLS client certificate (`tls-client`), mode 0600."""
        return self.secrets_dir / "tls" / "clients" / f"{name}.key"

    def client_cert_path(self, name: str) -> Path:
        return self.dir / "tls" / "clients" / f"{name}.crt"

    def has_client_cert(self, name: str) -> bool:
        return self.client_cert_path(name).exists() and self.client_key_path(name).exists()

    def _revoke_client_cert(self, name: str) -> None:
        if self.client_cert_path(name).exists():
            from provisioning import tls  # `cryptography` only where certificates are in use

            tls.revoke_client_cert(self, name)

    def service_user(self, name: str) -> ServiceUser:
        try:
            return self.service_users[name]
        except KeyError:
            known = ", ".join(sorted(self.service_users)) or "none"
            raise FleetError(f"unknown service account {name!r} (known: {known})") from None

    def service_secret_path(self, name: str) -> Path:
        return self.secrets_dir / "service" / f"{name}.password"

    # -- secrets ----------------------------------------------------------------------------------

    def _secret_path(self, gid: str, what: str = "") -> Path:
        return self.secrets_dir / (f"{gid}.{what}.password" if what else f"{gid}.password")

    def _write_secret(self, path: Path, password: str) -> None:
        private_dir(self.secrets_dir)
        private_dir(path.parent)
        write_atomic(path, password + "\n", private=True)


def read_ca(pem_file: Path) -> bytes:
    """A CA certificate file's bytes, or a FleetError saying why it is not one."""
    try:
        pem = pem_file.read_bytes()
    except OSError as exc:
        raise FleetError(f"--ca-file {pem_file}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise FleetError(f"--ca-file {pem_file}: not a PEM certificate (no BEGIN CERTIFICATE line)")
    return pem


def _known(raw: Any, keys: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise FleetError(f"{where}: expected an object")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise FleetError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")


def tls_warning(broker: dict[str, Any]) -> str | None:
    """The warning for a TLS broker block without a CA file (None when there is nothing to say)."""
    if broker.get("tls") and not broker.get("ca_file"):
        return ("warning: broker TLS is on but no CA file is given: MicroPython boards will NOT verify"
                " the broker's certificate (anyone on the path can pose as the broker). Give the CA with"
                " `citybrain provision set-broker --ca-file ca.pem` (or make one with `tls-init`).")
    return None
