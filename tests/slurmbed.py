"""A Slurm cluster on one machine: Debian's slurmctld, and a slurmd in each host of a ``NetBed``.

The hosts are tests/netbed.py's (a network, UTS and mount namespace each on a bridge); each host's
slurmd runs inside all three (entered through the host's sshd with ``nsenter``), so its hostname is
its NodeName and its address is the host's. slurmctld runs in this (the root) network namespace on
the bridge's address, in a UTS namespace of its own whose hostname is the controller's name; here
is also the "login node" where ``salloc`` and ``srun`` run. One munged, with a key made here,
serves all of them: its socket is a file in the bed's directory, which every host sees (their mount
namespaces hide only ``/run``), and ``AuthInfo=socket=`` points Slurm at it.

The configuration is written here (``SLURM_CONF`` in ``env``): no cgroups (``proctrack/linuxproc``,
``task/none``, ``select/linear``), every directory Slurm writes inside the bed's temporary directory.
``close`` ends munged and slurmctld by pid, each slurmd by pid (the host bed then ends whatever ran
in the hosts, slurmstepd and its tasks included) and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tests.netbed import NetBed
from tests.netbed import problem as netbed_problem

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
CONTROLLER = "gprocctl"


def problem() -> str | None:
    """Why the bed cannot be built here, or None when it can."""
    why = netbed_problem()
    if why:
        return why
    for path, pkg in ((SLURMCTLD, "slurmctld"), (SLURMD, "slurmd"), (MUNGED, "munge")):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed ({pkg}; Debian's slurm-wlm)"
    for tool in ("salloc", "srun", "scontrol", "nsenter"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (slurm-client / util-linux)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass
class SlurmBed:
    """slurmctld, munged and one slurmd per host of ``net`` (a bed already up)."""

    net: NetBed
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="gproc-slurmbed-"))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> str:
        return os.path.join(self.dir, "slurm.conf")

    @property
    def env(self) -> dict[str, str]:
        """What Slurm's commands here need to find this cluster."""
        return {**os.environ, "SLURM_CONF": self.conf}

    @property
    def nodes(self) -> list[str]:
        return list(self.net.hosts)

    def up(self, timeout: float = 60.0) -> SlurmBed:
        # munged wants its socket's directory (and those above) searchable by every user
        os.chmod(self.dir, 0o711)
        for d, mode in (("munge", 0o755), ("secret", 0o700), ("ctld", 0o700), ("slurmd", 0o700)):
            os.makedirs(os.path.join(self.dir, d), mode=mode)
            os.chmod(os.path.join(self.dir, d), mode)
        key = os.path.join(self.dir, "secret", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        sock = os.path.join(self.dir, "munge", "munge.socket")
        m = os.path.join(self.dir, "munge")
        self._start("munged", [MUNGED, "-F", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])  # fmt: skip
        self._write_conf(sock)
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            self._check("munged", os.path.join(m, "munged.log"), deadline)
            time.sleep(0.05)
        # its own hostname (SlurmctldHost's name), in this network namespace: on the bridge's address
        self._start("slurmctld", ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', CONTROLLER,
                                  SLURMCTLD, "-D", "-i", "-f", self.conf])  # fmt: skip
        for name in self.net.hosts:
            os.makedirs(os.path.join(self.dir, "slurmd", name), mode=0o700)
            self.start_slurmd(name)
        self._wait_idle(deadline)
        return self

    def start_slurmd(self, name: str) -> None:
        h = self.net.hosts[name]
        assert h.sshd is not None
        # the host's network, hostname and mounts: those its sshd runs in
        self._start(f"slurmd {name}", ["nsenter", "-t", str(h.sshd.pid), "-n", "-u", "-m",
                                       SLURMD, "-D", "-f", self.conf])  # fmt: skip

    def stop_slurmd(self, name: str) -> None:
        """Kill one node's slurmd (the node stays allocated; srun cannot start tasks there)."""
        p = self.procs[f"slurmd {name}"]
        p.kill()
        p.wait(10)

    def wait_idle(self, timeout: float = 60.0) -> None:
        self._wait_idle(time.monotonic() + timeout)

    def _start(self, what: str, argv: list[str]) -> None:
        with open(os.path.join(self.dir, what.replace(" ", "_") + ".out"), "ab") as out:
            self.procs[what] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=self.env
            )

    def _check(self, what: str, log: str, deadline: float) -> None:
        p = self.procs[what]
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited ({p.returncode}): {self.tail(log)}{self.tail(what + '.out')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in time: {self.tail(log)}")

    def tail(self, name: str, chars: int = 1500) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""

    def _write_conf(self, munge_socket: str) -> None:
        d = self.dir
        lines = [
            "ClusterName=gprocbed",
            f"SlurmctldHost={CONTROLLER}({self.net.gateway})",
            f"SlurmctldPort={_free_port()}",
            "SlurmdPort=6818",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={d}/ctld",
            f"SlurmctldPidFile={d}/ctld/slurmctld.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdSpoolDir={d}/slurmd/%n",
            f"SlurmdPidFile={d}/slurmd/%n/slurmd.pid",
            f"SlurmdLogFile={d}/slurmd/%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/linear",
            "SchedulerType=sched/builtin",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=2",
            "SlurmdTimeout=60",
            *(f"NodeName={n} NodeAddr={h.address} CPUs=2 State=UNKNOWN" for n, h in self.net.hosts.items()),
            "PartitionName=bed Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        # slurmd 22.05 always loads a cgroup plugin (CgroupPlugin=disabled comes with 24.05), and
        # the default, autodetect, fails in the hosts: `ip netns exec` mounts a fresh /sys there, with
        # nothing on /sys/fs/cgroup. cgroup/v1's start touches no cgroup, and no plugin here uses one.
        with open(os.path.join(self.dir, "cgroup.conf"), "w") as f:
            f.write("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")

    def _wait_idle(self, deadline: float) -> None:
        """Until every node is idle at the controller (each slurmd registered)."""
        states: dict[str, str] = {}
        while True:
            for what in self.procs:
                log = {"slurmctld": "slurmctld.log", "munged": "munge/munged.log"}.get(what, f"slurmd/{what[7:]}.log")
                self._check(what, log, deadline + 1e9)
            r = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format", "%N %t"],
                env=self.env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if r.returncode == 0:
                states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
                if states and all(states.get(n) == "idle" for n in self.nodes):
                    return
            if time.monotonic() > deadline:
                logs = "".join(self.tail(f"slurmd/{n}.log", 400) for n in self.nodes[:2])
                why = states or r.stderr
                raise RuntimeError(f"Slurm nodes not idle in time: {why}\n{self.tail('slurmctld.log')}{logs}")
            time.sleep(0.2)

    def close(self) -> None:
        """End what ``up`` started, by pid (slurmd first, munged last), and remove the directory."""
        for what in sorted(self.procs, key=lambda w: (w.startswith("munged"), w.startswith("slurmctld"))):
            p = self.procs[what]
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def slurmbed(names: Sequence[str]) -> Iterator[SlurmBed]:
    """Hosts (a NetBed) with Slurm on them, all removed on the way out, also after a failure."""
    net = NetBed(names)
    bed = SlurmBed(net)
    try:
        net.up()
        yield bed.up()
    finally:
        bed.close()
        net.close()
