"""The cluster credential: one key and self-signed certificate that every daemon holds.

Links are TLS 1.3 with mutual authentication: each side presents the credential's certificate and
trusts only that certificate, so a peer without the credential can neither register nor run anything.
The credential is also the cluster's CA: with per-node certificates (``gproc.certs``) each daemon holds
its own key and certificate and trusts the CA's certificate, and the shared key stays with the
administrator.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import ssl
from pathlib import Path

from gproc.errors import AuthError, UsageError

DEFAULT_KEY = "/etc/gproc/cluster.key"


def key_path(explicit: str | None = None) -> str:
    """The credential file: ``--key``, else ``$GPROC_KEY``, else /etc/gproc/cluster.key."""
    return explicit or os.environ.get("GPROC_KEY") or DEFAULT_KEY


def identity_paths(key: str | None, cert: str | None, ca: str | None) -> tuple[str, str | None, str | None]:
    """(key, cert, ca) as a daemon uses them. Without ``cert``: the shared credential (``key_path``).
    With it: the node's key (``--key``, else NAME.key beside NAME.crt, as ``gproc keygen --node``
    writes them) and the CA's certificate (``--ca``, else ca.crt beside it)."""
    if not cert:
        return key_path(key), None, None
    base = os.path.dirname(cert)
    stem = os.path.basename(cert).removesuffix(".crt").removesuffix(".pem")
    return key or os.path.join(base, stem + ".key"), cert, ca or os.path.join(base, "ca.crt")


def keygen(path: str, force: bool = False) -> str:
    """Write a new cluster credential (EC P-256 key + self-signed certificate) to ``path``, mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    p = Path(path)
    if p.exists() and not force:
        raise UsageError(f"{path} exists (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gproc cluster")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(serialization.Encoding.PEM)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, p)
    return str(p)


def _keep_from_children(path: str) -> None:
    """A credential handed over on a descriptor (``--key /proc/self/fd/N``, as ``gproc launch`` does)
    stays out of the programs the daemon starts: the descriptor was inheritable to reach us."""
    m = re.fullmatch(r"/(?:proc/self|dev)/fd/(\d+)", path)
    if m:
        with contextlib.suppress(OSError):
            os.set_inheritable(int(m[1]), False)


def _context(path: str, purpose: ssl.Purpose, cert: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """With ``cert``: this daemon's own certificate (key in ``path``) and trust in the CA ``ca`` only;
    without: the shared credential in ``path``, trusted by everyone who holds it."""
    for fd_path in (path, cert, ca):
        if fd_path:
            _keep_from_children(fd_path)
    if cert is None and not os.path.exists(path):
        raise AuthError(f"no cluster credential at {path} (make one with 'gproc keygen', or set --key)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # a peer's name is checked against the node it registers as (overlay)
    ctx.verify_mode = ssl.CERT_REQUIRED
    what = f"cluster credential {path}"
    try:
        if cert is None:
            ctx.load_cert_chain(path)
            ctx.load_verify_locations(path)
        else:
            if not ca:
                raise AuthError("a node certificate (--cert) needs the cluster CA's certificate (--ca)")
            what = f"certificate {cert} with key {path}"
            ctx.load_cert_chain(cert, path)
            what = f"CA certificate {ca}"
            ctx.load_verify_locations(ca)
    except OSError as e:
        raise AuthError(f"cannot read the {what}: {e.strerror}") from None
    except (ssl.SSLError, ValueError) as e:
        raise AuthError(f"cannot load the {what}: {e}") from None
    return ctx


def server_context(path: str, cert: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """TLS context for a daemon's listening side: requires the peer to present the credential (or a
    certificate of the cluster's CA)."""
    return _context(path, ssl.Purpose.CLIENT_AUTH, cert, ca)


def client_context(path: str, cert: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """TLS context for connecting to a parent: verifies the parent holds the credential (or a
    certificate of the cluster's CA)."""
    return _context(path, ssl.Purpose.SERVER_AUTH, cert, ca)
