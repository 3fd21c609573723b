"""Per-node identity: a cluster CA, node certificates it issues, and the checks that tie a node's
registered name to the certificate it holds.

The CA is the cluster credential ``gproc keygen`` makes (an EC key and a self-signed CA certificate in
one file). ``gproc keygen --node NAME`` signs a node certificate whose subject and DNS SAN are NAME.
With certificates, a parent admits a child only when the child's TLS certificate names the node it
registers as; the master also checks every registration, however deep, against the certificate itself:
the child's parent relays it with an *attach statement* the child signed with its key (its name, id,
instance, the name on its parent's certificate and the time), so an interior node cannot register names
it holds no key for. A revoked-serials file (one hexadecimal serial a line) is read by the master at
start and on SIGHUP.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gproc.errors import AuthError, UsageError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

NODE_DAYS = 825  # a node certificate's life unless told
STATEMENT_SKEW = 300.0  # seconds an attach statement's time may differ from the master's clock
ROLE_NODE = "gproc node"
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")  # the overlay's NAME_RE (which imports this module)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AuthError(f"cannot read the {what} {path}: {e.strerror}") from None


def load_ca(path: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate from a cluster credential file (``gproc keygen``'s)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read(path, "cluster CA")
    try:
        key = serialization.load_pem_private_key(data, password=None)
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise AuthError(f"{path} is not a cluster CA (a key and certificate made by 'gproc keygen')") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _is_ca(cert):
        raise AuthError(f"{path} is not a cluster CA (a key and certificate made by 'gproc keygen')")
    return key, cert


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issue(
    ca_path: str,
    name: str,
    out_dir: str,
    *,
    days: float = NODE_DAYS,
    not_before: datetime.datetime | None = None,
    force: bool = False,
) -> tuple[str, str, str]:
    """Issue a certificate for node ``name`` (the master's too: it is a node, rank 0) signed by the CA in
    ``ca_path``; write ``out_dir/NAME.key`` (0600), ``NAME.crt`` and the CA's ``ca.crt``; their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not NODE_NAME_RE.match(name):
        raise UsageError(f"bad node name {name[:80]!r} (letters, digits, '_', '.', '-')")
    ca_key, ca_cert = load_ca(ca_path)
    out = Path(out_dir)
    key_file, cert_file, ca_file = out / f"{name}.key", out / f"{name}.crt", out / "ca.crt"
    if not force and (key_file.exists() or cert_file.exists()):
        raise UsageError(f"{cert_file} exists (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_NODE),
            x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),  # the whole name is in the SAN
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(key_file, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _write_private(cert_file, cert.public_bytes(pem), 0o644)
    ca_pem = ca_cert.public_bytes(pem)
    if not ca_file.exists() or ca_file.read_bytes() != ca_pem:  # many nodes' certificates share one
        _write_private(ca_file, ca_pem, 0o644)
    return str(key_file), str(cert_file), str(ca_file)


def export_ca(ca_path: str, out: str) -> str:
    """Write the CA's certificate (public: what every daemon trusts) from a cluster credential."""
    from cryptography.hazmat.primitives import serialization

    _, cert = load_ca(ca_path)
    _write_private(Path(out), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out


def cert_names(cert: x509.Certificate) -> list[str]:
    """The node names a certificate holds (its DNS SANs)."""
    from cryptography import x509

    try:
        return list(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        return []


def peer_name(peercert: dict[str, Any] | None) -> str | None:
    """The node name on a verified TLS peer certificate (``SSLObject.getpeercert()``), if exactly one."""
    if not peercert:
        return None
    names = [v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]
    return names[0] if len(names) == 1 else None


def serial_text(serial: int) -> str:
    return format(serial, "X")


def read_revoked(path: str | None) -> frozenset[int]:
    """The serials in a revoked-serials file: hexadecimal (``0x`` optional), ``#`` comments; a
    missing file revokes nothing (it is made by the first ``gproc keygen --revoke``)."""
    if not path or not os.path.exists(path):
        return frozenset()
    out = set()
    for n, line in enumerate(_read(path, "revoked-serials file").decode(errors="replace").splitlines(), 1):
        word = line.split("#", 1)[0].strip().replace(":", "")
        if not word:
            continue
        try:
            out.add(int(word.removeprefix("0x").removeprefix("0X"), 16))
        except ValueError:
            raise AuthError(f"{path}:{n}: not a hexadecimal serial: {word[:40]!r}") from None
    return frozenset(out)


def revoke(cert_path: str, revoked_path: str) -> int:
    """Append a certificate's serial (with its name) to the revoked-serials file; the serial."""
    cert = load_cert(cert_path)
    line = f"{serial_text(cert.serial_number)}  # {','.join(cert_names(cert)) or '?'}\n"
    Path(revoked_path).parent.mkdir(parents=True, exist_ok=True)
    with open(revoked_path, "a") as f:
        f.write(line)
    return int(cert.serial_number)


def load_cert(path: str, what: str = "certificate") -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError:
        raise AuthError(f"{path} holds no PEM certificate") from None


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(_read(path, "key"), password=None)
    except (ValueError, TypeError):
        raise AuthError(f"{path} holds no unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AuthError(f"{path}: only EC keys (as 'gproc keygen --node' makes) are supported")
    return key


def statement(name: str, nid: str, instance: str, parent: str, when: int) -> bytes:
    return "\0".join(("gproc-attach-1", name, nid, instance, parent, str(when))).encode()


@dataclass
class NodeIdentity:
    """A daemon's own certificate and key (to sign attach statements) and the CA it trusts."""

    cert: x509.Certificate
    cert_der: bytes
    key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    name: str

    def sign(self, nid: str, instance: str, parent: str) -> tuple[int, bytes]:
        """(time, signature) of this node's attach statement under ``parent``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        when = int(time.time())
        return when, self.key.sign(statement(self.name, nid, instance, parent, when), ec.ECDSA(hashes.SHA256()))


def node_identity(cert_path: str, key_path: str, ca_path: str, name: str | None = None) -> NodeIdentity:
    """Load and check a daemon's own identity: the certificate is the CA's, valid now, for ``name``
    (when given) and matches the key. Each failure is one line (AuthError)."""
    from cryptography.hazmat.primitives import serialization

    cert, key, ca = load_cert(cert_path), load_key(key_path), load_cert(ca_path, "CA certificate")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise AuthError(f"the key {key_path} does not belong to the certificate {cert_path}")
    why = check_cert(cert, ca)
    if why:
        raise AuthError(f"{cert_path}: {why}")
    names = cert_names(cert)
    if name is not None and name not in names:
        raise AuthError(f"{cert_path} is for {', '.join(names) or 'no node'}, not for {name}")
    return NodeIdentity(cert, cert.public_bytes(serialization.Encoding.DER), key, ca, name or names[0])


def check_cert(cert: x509.Certificate, ca: x509.Certificate, revoked: frozenset[int] = frozenset()) -> str | None:
    """Why ``cert`` is not a valid node certificate of ``ca`` now (None: it is)."""
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "certificate not issued by this cluster's CA"
    now = datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        return f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.serial_number in revoked:
        return f"certificate {serial_text(cert.serial_number)} is revoked"
    if len(cert_names(cert)) != 1:
        return "certificate names no single node"
    return None


def check_attach(
    ca: x509.Certificate,
    revoked: frozenset[int],
    args: dict[str, Any],
    parent_name: str,
) -> int:
    """Check a registration as the master: the relayed certificate is the CA's, valid, not revoked and
    for the registering name, and the child signed the statement of this registration under a parent of
    this name within ``STATEMENT_SKEW`` seconds. The certificate's serial; AuthError saying why not."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    name, nid, instance = args.get("name"), args.get("id"), args.get("instance")
    der, sig, when = args.get("cert"), args.get("sig"), args.get("when")
    if not isinstance(der, bytes) or not isinstance(sig, bytes) or not isinstance(when, int):
        raise AuthError(f"node {name} registers without a certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthError(f"node {name} registers with a garbled certificate") from None
    why = check_cert(cert, ca, revoked)
    if why:
        raise AuthError(f"node {name}: {why}")
    names = cert_names(cert)
    if name not in names:
        raise AuthError(f"node {name} presents the certificate of {', '.join(names)}")
    if abs(time.time() - when) > STATEMENT_SKEW:
        raise AuthError(
            f"node {name}: its attach statement is stale (clocks apart by more than {STATEMENT_SKEW:.0f}s?)"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AuthError(f"node {name}: not an EC certificate")
    try:
        key.verify(
            sig, statement(str(name), str(nid), str(instance or ""), parent_name, when), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise AuthError(f"node {name}: attach statement not signed by its key under parent {parent_name}") from None
    return int(cert.serial_number)
