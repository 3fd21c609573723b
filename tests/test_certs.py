"""The master's check of a registration (``certs.check_attach``) against real certificates and keys,
and the revoked-serials file: each way a registration can lie is refused, and says how."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gproc import certs, credential
from gproc.errors import AuthError, UsageError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = str(tmp_path_factory.mktemp("pki"))
    credential.keygen(os.path.join(d, "cluster.key"))
    for name in ("a", "b", "master"):
        certs.issue(os.path.join(d, "cluster.key"), name, d)
    os.makedirs(os.path.join(d, "other"))
    credential.keygen(os.path.join(d, "other", "cluster.key"))
    certs.issue(os.path.join(d, "other", "cluster.key"), "a", os.path.join(d, "other"))
    yield d


def ident(d: str, name: str) -> certs.NodeIdentity:
    return certs.node_identity(
        os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key"), os.path.join(d, "ca.crt")
    )


def attach(who: certs.NodeIdentity, name: str, parent: str, when: float | None = None) -> dict[str, object]:
    """The attach arguments a parent relays for ``who`` registering as ``name`` under ``parent``, the
    statement signed with ``who``'s key (as an impostor would sign for the name it claims)."""
    t = int(time.time() if when is None else when)
    sig = who.key.sign(certs.statement(name, "7", "i1", parent, t), ec.ECDSA(hashes.SHA256()))
    return {"name": name, "id": "7", "instance": "i1", "cert": who.cert_der, "sig": sig, "when": t}


def test_a_valid_registration_gives_the_serial(pki: str) -> None:
    a = ident(pki, "a")
    assert certs.check_attach(a.ca, frozenset(), attach(a, "a", "master"), "master") == a.cert.serial_number


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("another name", "node b presents the certificate of a"),
        ("another parent", "not signed by its key under parent master"),
        ("stale", "attach statement is stale"),
        ("revoked", "is revoked"),
        ("foreign", "not issued by this cluster's CA"),
        ("no certificate", "registers without a certificate"),
        ("garbled", "garbled certificate"),
        ("tampered", "not signed by its key"),
    ],
)
def test_every_lie_is_refused(pki: str, case: str, why: str) -> None:
    a, ca = ident(pki, "a"), ident(pki, "a").ca
    revoked: frozenset[int] = frozenset()
    if case == "another name":
        args = attach(a, "b", "master")
    elif case == "another parent":  # a statement made under parent b, relayed as if under the master
        args = attach(a, "a", "b")
    elif case == "stale":
        args = attach(a, "a", "master", when=time.time() - 2 * certs.STATEMENT_SKEW)
    elif case == "revoked":
        args, revoked = attach(a, "a", "master"), frozenset({a.cert.serial_number})
    elif case == "foreign":
        other = os.path.join(pki, "other")
        f = certs.node_identity(*(os.path.join(other, x) for x in ("a.crt", "a.key", "ca.crt")))
        args = attach(f, "a", "master")
    elif case == "no certificate":
        args = {k: v for k, v in attach(a, "a", "master").items() if k != "cert"}
    elif case == "garbled":
        args = {**attach(a, "a", "master"), "cert": b"\x30\x03garbage"}
    else:
        good = attach(a, "a", "master")
        args = {**good, "id": "8"}  # the statement said id 7
    with pytest.raises(AuthError) as e:
        certs.check_attach(ca, revoked, args, "master")
    assert why in str(e.value), e.value


def test_own_certificate_checked_at_start(pki: str, tmp_path: object) -> None:
    with pytest.raises(AuthError, match="is for a, not for b"):
        certs.node_identity(*(os.path.join(pki, x) for x in ("a.crt", "a.key", "ca.crt")), name="b")
    with pytest.raises(AuthError, match="does not belong"):
        certs.node_identity(*(os.path.join(pki, x) for x in ("a.crt", "b.key", "ca.crt")))
    with pytest.raises(AuthError, match="not issued by this cluster's CA"):
        certs.node_identity(*(os.path.join(pki, x) for x in ("a.crt", "a.key", "other/ca.crt")))
    old = os.path.join(pki, "old")
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    certs.issue(os.path.join(pki, "cluster.key"), "a", old, not_before=start, days=1)
    with pytest.raises(AuthError, match="expired on"):
        certs.node_identity(*(os.path.join(old, x) for x in ("a.crt", "a.key", "ca.crt")))


def test_revoked_file(tmp_path: object, pki: str) -> None:
    path = os.path.join(str(tmp_path), "revoked")
    assert certs.read_revoked(path) == frozenset()  # none yet: nothing revoked
    serial = certs.revoke(os.path.join(pki, "b.crt"), path)
    with open(path, "a") as f:
        f.write("# a comment\n\n0xAB  # by hand\nde:ad\n")
    assert certs.read_revoked(path) == {serial, 0xAB, 0xDEAD}
    with open(path, "a") as f:
        f.write("zz\n")
    with pytest.raises(AuthError, match=r"revoked:6: not a hexadecimal serial: 'zz'"):
        certs.read_revoked(path)


def test_issue_refuses_bad_names_and_overwrites(pki: str) -> None:
    with pytest.raises(UsageError, match="bad node name"):
        certs.issue(os.path.join(pki, "cluster.key"), "a b", pki)
    with pytest.raises(UsageError, match="exists"):
        certs.issue(os.path.join(pki, "cluster.key"), "a", pki)
    with pytest.raises(AuthError, match="not a cluster CA"):
        certs.issue(os.path.join(pki, "a.key"), "c", pki)
