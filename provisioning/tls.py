"""The fleet's TLS kit: its own CA, the broker's certificate, the files the broker and gateways need.

EC P-256 throughout: MicroPython's mbedtls (boards and the unix port) has ECDHE-ECDSA but not
ECDHE-RSA key exchange (docs/provisioning.md, "TLS"). The CA's key never leaves `secrets/tls/`;
its certificate is the fleet's `ca.pem`, shipped beside every gateway config. The broker's key
and certificate go to `out/mosquitto/` at `render`, with the listener lines that use them.

`cryptography` is imported here only, so the rest of `citybrain` runs without it.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from provisioning.files import private_dir, write_atomic
from provisioning.fleet import Fleet, FleetError

CA_DAYS = 3650
BROKER_DAYS = 825  # the longest server-certificate life many TLS clients still accept


def ca_key_path(fleet: Fleet) -> Path:
    return fleet.secrets_dir / "tls" / "ca.key"


def broker_key_path(fleet: Fleet) -> Path:
    return fleet.secrets_dir / "tls" / "broker.key"


def broker_cert_path(fleet: Fleet) -> Path:
    return fleet.dir / "tls" / "broker.crt"


def _new_key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "citybrain"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def init_ca(fleet: Fleet, *, days: int = CA_DAYS) -> None:
    """A new fleet CA: key in secrets/tls/ca.key (0600), certificate as the fleet's ca.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = _name(f"citybrain fleet CA {fleet.dir.resolve().name}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=True, crl_sign=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    private_dir(ca_key_path(fleet).parent.parent)
    private_dir(ca_key_path(fleet).parent)
    write_atomic(ca_key_path(fleet), _key_pem(key), private=True)
    write_atomic(fleet.ca_path, cert.public_bytes(serialization.Encoding.PEM))
    # The old CA's revocations mean nothing under the new one (none of its certificates verify):
    # render signs a fresh, empty CRL with this CA.
    revoked_path(fleet).unlink(missing_ok=True)
    crl_path(fleet).unlink(missing_ok=True)


def issue_broker_cert(fleet: Fleet, names: list[str], *, days: int = BROKER_DAYS) -> None:
    """The broker's key and certificate for `names` (host names and addresses gateways dial)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not names:
        raise FleetError("tls-init: give the broker's names (--name mqtt.city.example)")
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path(fleet).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())
    except FileNotFoundError as exc:
        raise FleetError(f"no fleet CA ({exc.filename}): run `citybrain provision tls-init --dir {fleet.dir}`"
                         " without --keep-ca") from None
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0])).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    write_atomic(broker_key_path(fleet), _key_pem(key), private=True)
    write_atomic(broker_cert_path(fleet), cert.public_bytes(serialization.Encoding.PEM))


CLIENT_DAYS = 825


def crl_path(fleet: Fleet) -> Path:
    """The fleet CA's certificate revocation list (PEM): the client certificates of removed
    accounts and replaced certificates. Public; `render` ships it to the broker as `crl.pem`."""
    return fleet.dir / "tls" / "crl.pem"


def revoked_path(fleet: Fleet) -> Path:
    """The revoked certificates, one `<serial hex> <revocation time ISO> <account>` line each."""
    return fleet.dir / "tls" / "revoked.txt"


def revoke_client_cert(fleet: Fleet, name: str) -> bool:
    """Put the account's client certificate on the CRL (False if it has none of the current CA:
    one of a CA that `tls-init` replaced verifies nowhere any more)."""
    from cryptography import x509

    if not has_current_client_cert(fleet, name):
        return False
    cert = x509.load_pem_x509_certificate(fleet.client_cert_path(name).read_bytes())
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    try:
        lines = revoked_path(fleet).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    lines.append(f"{cert.serial_number:x} {now.isoformat()} {name}")
    write_atomic(revoked_path(fleet), "\n".join(lines) + "\n")
    write_crl(fleet)
    return True


def write_crl(fleet: Fleet) -> None:
    """Sign the CRL afresh from revoked.txt (an empty one when nothing is revoked: a broker with a
    `crlfile` refuses every client certificate of a CA it has no CRL of). It is valid until the CA
    expires: an expired CRL would make the broker refuse every certificate of the fleet."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        ca_key = serialization.load_pem_private_key(ca_key_path(fleet).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())
    except FileNotFoundError as exc:
        raise FleetError(f"no fleet CA ({exc.filename}) to sign the revocation list: run `citybrain provision"
                         f" tls-init --dir {fleet.dir}`") from None
    try:
        lines = revoked_path(fleet).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=5)).next_update(ca_cert.not_valid_after_utc))
    for line in lines:
        serial, when, _name = line.split(" ", 2)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
            .revocation_date(datetime.datetime.fromisoformat(when)).build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    write_atomic(crl_path(fleet), crl.public_bytes(serialization.Encoding.PEM))


def has_current_client_cert(fleet: Fleet, name: str) -> bool:
    """The account has a client certificate signed by the fleet's current CA (one of a CA that
    `tls-init` replaced no longer verifies)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if not fleet.has_client_cert(name):
        return False
    try:
        ca = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())
        x509.load_pem_x509_certificate(fleet.client_cert_path(name).read_bytes()).verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):  # unreadable, or another CA's
        return False
    return True


def issue_client_cert(fleet: Fleet, name: str, *, days: int = CLIENT_DAYS) -> None:
    """A client certificate for account `name` (a gateway or a service account), signed by the
    fleet CA, its common name the account name: a broker with `use_identity_as_username` takes
    that as the username, so the certificate of gateway A can only ever act as A. A certificate
    it replaces is revoked (on the CRL)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if name not in fleet.gateways and name not in fleet.service_users:
        raise FleetError(f"{name}: no such gateway or service account")
    revoke_client_cert(fleet, name)
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path(fleet).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())
    except FileNotFoundError as exc:
        raise FleetError(f"no fleet CA ({exc.filename}): run `citybrain provision tls-init --dir {fleet.dir}`"
                         " first (client certificates are signed by the fleet's own CA)") from None
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    private_dir(fleet.client_key_path(name).parent)
    write_atomic(fleet.client_key_path(name), _key_pem(key), private=True)
    write_atomic(fleet.client_cert_path(name), cert.public_bytes(serialization.Encoding.PEM))
