"""Separate network stacks on one machine: Linux network namespaces joined by a bridge.

Each "host" is a namespace with one veth pair: one end inside it (`eth0`, an address on a
private /24), the other end a port of a bridge in the test's own namespace, which holds the
subnet's first address so the test can reach every host (metrics). Cutting a host's link
takes its bridge port down: packets are lost both ways, no reset is sent, exactly as when a
cable is pulled. Everything made here is deleted by `close`.

Needs root and `ip` (iproute2); `unavailable()` says why not, for a skip. `tc netem` may be
missing from a kernel (a module not built or not loadable): `impair` then returns the reason
and the host's link stays unimpaired.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"arlprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """A bridge and the namespaces attached to it; `add` a host, `close` removes them all."""

    def __init__(self) -> None:
        # Names unique to this process (a crashed run's leftovers cannot collide); interface
        # names are limited to 15 characters.
        self.tag = f"arl{os.getpid() % 100000}"
        self.bridge = f"{self.tag}br"
        # A /24 in 10.0.0.0/8 chosen by pid, away from the usual 10.0.x and 10.96 ranges.
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250 + 1}"
        self.gateway = f"{self.subnet}.1"
        self.hosts: dict[str, tuple[str, str, str]] = {}  # name -> (netns, bridge port, ip)
        self._made_bridge = True
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except subprocess.CalledProcessError:
            self.close()
            raise

    def add(self, name: str) -> str:
        """A new host `name`; returns its address."""
        n = len(self.hosts) + 2
        netns, port, address = f"{self.tag}-{name}", f"{self.tag}v{n}", f"{self.subnet}.{n}"
        _ip("netns", "add", netns)
        self.hosts[name] = (netns, port, address)  # registered first: close() removes it
        _ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", port, "master", self.bridge)
        _ip("link", "set", port, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        return address

    def address(self, name: str) -> str:
        return self.hosts[name][2]

    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run inside host `name`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[name][0], *argv]

    def impair(self, name: str, netem: str) -> str | None:
        """`tc netem` arguments (e.g. "delay 20ms 5ms loss 1%") on both directions of the
        host's link; None when applied, else why not (the link stays as it was)."""
        if shutil.which("tc") is None:
            return "`tc` is not installed"
        netns, port, _ = self.hosts[name]
        for argv in (
            ["tc", "qdisc", "add", "dev", port, "root", "netem", *netem.split()],
            ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem"]
            + netem.split(),
        ):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                subprocess.run(["modprobe", "sch_netem"], capture_output=True, timeout=30)
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                subprocess.run(["tc", "qdisc", "del", "dev", port, "root"], capture_output=True)
                return f"tc netem unavailable: {done.stderr.strip()}"
        return None

    def cut(self, name: str) -> None:
        _ip("link", "set", self.hosts[name][1], "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self.hosts[name][1], "up")

    def close(self) -> None:
        for netns, port, _ in self.hosts.values():
            # The pair first: a namespace's own devices go away only once the kernel has
            # finished tearing it down, after `netns del` returns.
            _ip("link", "del", port, check=False)
            _ip("netns", "del", netns, check=False)
        self.hosts = {}
        if self._made_bridge:
            _ip("link", "del", self.bridge, check=False)
            self._made_bridge = False


def leftovers(tag: str) -> list[str]:
    """Namespaces and links named with `tag` that still exist (a test asserts none)."""
    names = _ip("netns", "list", check=False).stdout.split()
    links = _ip("-o", "link", "show", check=False).stdout.splitlines()
    return [n for n in names if n.startswith(tag)] + [
        line.split(":")[1].strip() for line in links if f" {tag}" in line
    ]


def write_keys_copy(src: Path, dst: Path, names: list[str]) -> Path:
    """Copy the named key files from one host's key directory to another's, as an operator
    copies them (README, "Running at scale")."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst / name).write_bytes((src / name).read_bytes())
    return dst
