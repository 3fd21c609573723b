"""A test bed of real hosts on one machine: one network namespace per host on a Linux bridge.

Each host has its own network stack (a veth pair on the bridge, an address in a private /24 that
exists only on the bridge and inside the namespaces), its own hostname (UTS namespace) and mounts
(mount namespace: a private ``/etc/hosts`` and an empty ``/run``), and runs Debian's sshd with a host
key and a client key made here. The bridge holds the subnet's first address in this (the root)
namespace, so a master started here is reachable from every host at ``bed.gateway``.

``NetBed.close`` removes everything it made, in reverse, whatever state ``up`` reached: processes in
the host namespaces (by pid, from ``ip netns pids``: everything there descends from our sshd), the
namespaces (their veth ends go with them), the bridge and the temporary directory. Needs root, ``ip``
(iproute2) and ``/usr/sbin/sshd`` (openssh-server).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

SSHD = "/usr/sbin/sshd"

# inside the new UTS + mount namespaces: hostname, an empty /run (sshd's privilege separation
# directory, a host's own run files), the host's /etc/hosts, an empty tmpfs over each hidden
# directory; then sshd becomes this process (same pid)
_ENTER = (
    'hostname "$1" && mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/sshd'
    ' && mount --bind "$2" /etc/hosts && shift 2'
    ' && IFS=: && for d in $GPROC_BED_HIDE; do mount -t tmpfs -o mode=755 tmpfs "$d" || exit 1; done'
    ' && unset IFS GPROC_BED_HIDE && exec "$@"'
)


def problem() -> str | None:
    """Why the bed cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network, UTS and mount namespaces, a bridge)"
    for tool, pkg in (("ip", "iproute2"), ("unshare", "util-linux"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed ({pkg})"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (openssh-server)"
    r = subprocess.run(["ip", "netns", "add", f"gpprobe{os.getpid()}"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"gpprobe{os.getpid()}"], capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.X.0/24 that no interface here uses (so two beds, or a real network, never clash)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    out += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, timeout=10).stdout
    start = os.getpid() % 200
    for k in range(250):
        x = (start + k) % 250
        if f"10.77.{x}." not in out:
            return ipaddress.IPv4Network(f"10.77.{x}.0/24")
    raise RuntimeError("no free 10.77.X.0/24 subnet")


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    sshd: subprocess.Popen[bytes] | None = None


@dataclass
class NetBed:
    """``len(names)`` hosts with sshd; ``ssh_command`` reaches each by its name as root."""

    names: Sequence[str]
    refuse: Sequence[str] = ()  # hosts whose sshd accepts no key (a login that is refused)
    absent: Sequence[str] = ()  # names with an address on the bridge's subnet and no host behind it
    hide: Mapping[str, Sequence[str]] = field(default_factory=dict)  # host -> directories it does not have
    multicast: bool = False  # the bridge floods multicast (snooping off), hosts route 224.0.0.0/4 to it
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="gproc-netbed-"))
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    gateway: str = ""

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.dir, "ssh_config")

    @property
    def ssh_command(self) -> list[str]:
        return ["ssh", "-F", self.ssh_config]

    def up(self, timeout: float = 20.0) -> NetBed:
        net = _free_subnet()
        tag = f"{os.getpid() % 100000}-{net.network_address.packed[2]}"  # two beds at once differ by subnet
        addrs = list(net.hosts())
        self.gateway = str(addrs[0])
        self.bridge = f"gpb{tag}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{net.prefixlen}", "dev", self.bridge)
        if self.multicast:  # no IGMP querier here: with snooping on, the bridge would drop group traffic
            _ip("link", "set", "dev", self.bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            h = Host(name, str(addrs[10 + i]), f"gproc-{tag}-{name}", f"gv{tag}-{i}")
            _ip("netns", "add", h.netns)
            self.hosts[name] = h
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            _ip("link", "set", h.veth, "master", self.bridge)
            _ip("link", "set", h.veth, "up")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            if self.multicast:
                _ip("-n", h.netns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        self._keys()
        for h in self.hosts.values():
            self.start_sshd(h.name)
        deadline = time.monotonic() + timeout
        for h in self.hosts.values():
            self._wait_sshd(h, deadline)
        return self

    def _keys(self) -> None:
        for k in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, k)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        shutil.copy(os.path.join(self.dir, "client_key.pub"), os.path.join(self.dir, "authorized_keys"))
        lines = [f"Host {h.name}\n  HostName {h.address}\n" for h in self.hosts.values()]
        net = ipaddress.ip_network(f"{self.gateway}/24", strict=False)
        lines += [f"Host {n}\n  HostName {net.network_address + 200 + i}\n" for i, n in enumerate(self.absent)]
        lines.append(
            f"Host *\n  User root\n  IdentityFile {self.dir}/client_key\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
            "  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n"
        )
        with open(self.ssh_config, "w") as f:
            f.write("".join(lines))
        with open(os.path.join(self.dir, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n{self.gateway} gproc-gateway\n")
            f.writelines(f"{h.address} {h.name}\n" for h in self.hosts.values())

    def start_sshd(self, name: str) -> None:
        h = self.hosts[name]
        keys = "none" if name in self.refuse else os.path.join(self.dir, "authorized_keys")
        cfg = os.path.join(self.dir, f"sshd_{name}.conf")
        with open(cfg, "w") as f:
            f.write(
                f"ListenAddress {h.address}\nPort 22\nHostKey {self.dir}/host_key\n"
                f"PidFile {self.dir}/sshd_{name}.pid\nAuthorizedKeysFile {keys}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
                "PrintMotd no\nSubsystem sftp internal-sftp\n"
            )
        with open(os.path.join(self.dir, f"sshd_{name}.log"), "ab") as log:
            h.sshd = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, "unshare", "--uts", "--mount", "--propagation", "private",
                 "sh", "-c", _ENTER, "sh", name, os.path.join(self.dir, "hosts"), SSHD, "-D", "-e", "-f", cfg],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "GPROC_BED_HIDE": ":".join(self.hide.get(name, ()))},
            )  # fmt: skip

    def _wait_sshd(self, h: Host, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert h.sshd is not None
            if h.sshd.poll() is not None:
                raise RuntimeError(f"sshd on {h.name} exited: {self.log(h.name)}")
            with contextlib.suppress(OSError), socket.create_connection((h.address, 22), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {h.name} not listening in time")

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, f"sshd_{name}.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def stop_sshd(self, name: str) -> None:
        """Stop one host's sshd (the host stays up: its address answers, port 22 refuses)."""
        h = self.hosts[name]
        if h.sshd is not None and h.sshd.poll() is None:
            h.sshd.kill()
            h.sshd.wait(10)

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a host's network namespace (the caller ends it; ``close`` would too)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[name].netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def pids(self, name: str) -> list[int]:
        """Every process in a host's network namespace (sshd, sessions, daemons started over ssh)."""
        r = subprocess.run(["ip", "netns", "pids", self.hosts[name].netns], capture_output=True, text=True, timeout=10)
        return [int(p) for p in r.stdout.split()]

    def daemons(self, name: str) -> list[int]:
        """Processes in a host other than its sshd."""
        h = self.hosts[name]
        own = {h.sshd.pid} if h.sshd is not None and h.sshd.poll() is None else set()
        return [p for p in self.pids(name) if p not in own]

    def loss(self, name: str, percent: float) -> None:
        """Drop ``percent`` % of the UDP packets that reach a host, at random (0: none). An nftables
        rule in the host's namespace (``numgen random``): this machine's kernel has no tc netem."""
        self.clear_loss(name)
        if percent <= 0:
            return
        share = "" if percent >= 100 else f"numgen random mod 10000 < {round(percent * 100)} "
        rule = (
            "table inet gproc_loss {\n chain input {\n type filter hook input priority 0; policy accept;\n"
            f" meta l4proto udp {share}drop\n }}\n}}\n"
        )
        r = subprocess.run(["ip", "netns", "exec", self.hosts[name].netns, "nft", "-f", "-"], input=rule,
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"nft on {name}: {r.stderr.strip()}")

    def clear_loss(self, name: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.hosts[name].netns, "nft", "delete", "table", "inet", "gproc_loss"],
                       capture_output=True, timeout=20)  # fmt: skip

    def rules(self) -> dict[str, str]:
        """Each host's nftables rules (empty once every loss was cleared)."""
        out = {}
        for h in self.hosts.values():
            r = subprocess.run(["ip", "netns", "exec", h.netns, "nft", "list", "ruleset"], capture_output=True,
                               text=True, timeout=20)  # fmt: skip
            out[h.name] = r.stdout.strip()
        return out

    def close(self) -> None:
        """Remove everything ``up`` made (safe after a partial ``up``, and twice)."""
        for h in self.hosts.values():
            for pid in self.pids(h.name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if h.sshd is not None:
                with contextlib.suppress(ProcessLookupError):
                    h.sshd.kill()
                h.sshd.wait(10)
            deadline = time.monotonic() + 10
            while self.pids(h.name) and time.monotonic() < deadline:
                time.sleep(0.05)
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, timeout=20)
            subprocess.run(["ip", "link", "del", h.veth], capture_output=True, timeout=20)  # gone with the ns
        self.hosts.clear()
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=20)
            self.bridge = ""
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def netbed(
    names: Sequence[str],
    refuse: Sequence[str] = (),
    absent: Sequence[str] = (),
    hide: Mapping[str, Sequence[str]] | None = None,
    multicast: bool = False,
) -> Iterator[NetBed]:
    """A bed that is removed on the way out, also when building it failed half-way."""
    bed = NetBed(names, refuse=refuse, absent=absent, hide=hide or {}, multicast=multicast)
    try:
        yield bed.up()
    finally:
        bed.close()
