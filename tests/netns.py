"""A network namespace joined to this machine by one veth pair, for a test that cuts a node off the network.

Owns: the namespace NAME, the veth pair `NAME-h` (here, with host_ip) and
`NAME-n` (inside, with ns_ip), and the neighbour entries of both ends. Every
call is `ip` (iproute2) as root; `available()` says why not when it cannot.

How the cut works, and why this way: each end's neighbour entry for the other
end is pinned (`nud permanent`) to the other end's real MAC at create(); cut()
re-pins both to a MAC no interface has (BOGUS_MAC). Every IPv4 frame still
leaves, and the other end throws it away as addressed to another host
(PACKET_OTHERHOST), silently. So a TCP connection just hangs, both ways: no
reset, no ICMP, no local error; an established one retransmits into the void
and carries on after heal(), and a new connect() times out. The links stay up
and the routes stay put, so nothing leaks out another interface. The obvious
tools are worse: `ip link set down` makes the neighbour lookup fail, and a
connect() then fails in 3s with EHOSTUNREACH instead of hanging (and with the
host's end down its replies follow the default route out); netem (`tc qdisc … loss 100%`) needs
sch_netem, which kernels built without traffic control (this CI's) lack; an
iptables/nft DROP needs a package and touches the host's firewall.
"""

import os
import re
import shutil
import subprocess

BOGUS_MAC = "02:00:00:00:00:00"  # locally administered, assigned to nothing
NAME = re.compile(r"^[a-z][a-z0-9]{0,12}$")  # NAME-h must fit IFNAMSIZ (15)
IP_SECONDS = 15


class NetnsError(RuntimeError):
    """An `ip` command failed; the sentence carries the command and its stderr."""


def _ip(*args, check=True):
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_SECONDS)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not finish in {IP_SECONDS}s") from None
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


class Netns:
    """A namespace `name` with `ns_ip` inside, reaching this machine's `host_ip` over a veth pair (a /24)."""

    _why_not = ...  # available()'s answer, once

    def __init__(self, name, host_ip="10.203.0.1", ns_ip="10.203.0.2", prefix=24):
        if not NAME.match(name):
            raise ValueError(f"netns name {name!r}: a lowercase letter, then letters and digits, at most 13")
        self.name, self.host_ip, self.ns_ip, self.prefix = name, host_ip, ns_ip, prefix
        self.host_dev, self.ns_dev = f"{name}-h", f"{name}-n"
        self.is_cut = False

    @classmethod
    def available(cls):
        """Why no namespace can be made here (None when one can). Tries once per process."""
        if cls._why_not is ...:
            cls._why_not = cls._probe()
        return cls._why_not

    @classmethod
    def _probe(cls):
        if os.geteuid() != 0:
            return "not root: a network namespace and a veth pair need root (CAP_NET_ADMIN); run the tests as root"
        if not shutil.which("ip"):
            return "no `ip` binary (apt-get install iproute2)"
        probe = cls(f"hp{os.getpid() % 10**9}", "10.203.255.1", "10.203.255.2")
        try:
            probe.create()
        except NetnsError as e:
            return f"cannot make a network namespace with a veth pair here: {e}"
        finally:
            probe.delete()
        return None

    def create(self):
        """Make the namespace (lo up) and the veth pair, both ends up and addressed; first removes the
        leftovers of an earlier run with this name."""
        self.delete()
        try:
            _ip("netns", "add", self.name)
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.host_dev)
            _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/{self.prefix}", "dev", self.ns_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("-n", self.name, "link", "set", self.ns_dev, "up")
            self.host_mac = self._mac(self.host_dev)
            self.ns_mac = self._mac(self.ns_dev, "-n", self.name)
            self.heal()  # pins both neighbour entries: from here on only cut() and heal() change them
        except NetnsError:
            self.delete()
            raise
        return self

    @staticmethod
    def _mac(dev, *where):
        out = _ip(*where, "-o", "link", "show", "dev", dev).stdout
        found = re.search(r"link/ether ([0-9a-f:]{17})", out)
        if not found:
            raise NetnsError(f"`ip link show dev {dev}` shows no MAC address: {out.strip()}")
        return found.group(1)

    def _pin(self, host_side_mac, ns_side_mac):
        _ip("neigh", "replace", self.ns_ip, "lladdr", host_side_mac, "dev", self.host_dev, "nud", "permanent")
        _ip("-n", self.name, "neigh", "replace", self.host_ip, "lladdr", ns_side_mac, "dev", self.ns_dev,
            "nud", "permanent")

    def cut(self):
        """Drop every IPv4 packet between the namespace and this machine, both ways, silently (see the header)."""
        self._pin(BOGUS_MAC, BOGUS_MAC)
        self.is_cut = True

    def heal(self):
        """Carry packets again; connections that hung through the cut resume."""
        self._pin(self.ns_mac, self.host_mac)
        self.is_cut = False

    def delete(self):
        """Remove the veth pair and the namespace; nothing to remove is fine."""
        # the pair first: deleting one end deletes both, at once; a namespace's devices go only when
        # the kernel gets to cleaning it up, later
        if _ip("link", "show", "dev", self.host_dev, check=False).returncode == 0:
            _ip("link", "del", "dev", self.host_dev)
        if os.path.exists(f"/run/netns/{self.name}"):
            _ip("netns", "del", self.name)

    def wrap(self, argv):
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.delete()
