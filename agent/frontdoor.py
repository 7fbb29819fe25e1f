"""The enrollment listener's front door: who may hold a pre-authentication slot, for how long.

`FrontDoor` is the one object here: a table of the connections that have not authenticated yet
(no verified SRP proof), keyed by source. It is sans-IO (no sockets, no asyncio; the clock is
injected) so every policy decision is a three-line test; `agent/server.py` only asks it and
closes what it says. `FirstFrameWatch` tells, from the bytes as they arrive, when a connection's
first frame is complete and whether it is a valid `hello`. The asyncio adapter lives in
agent/frontdoor_asyncio.py: `DoorProtocol` holds a connection until then and hands a hello, bytes
and all, to the enrollment driver; `DoorSocket` refuses penalised sources at accept.

The limits, the table that applies them and the answers it chooses are one module (~600 lines):
each constant's reason sits beside the rule that uses it, and the table is one object.

The threat: anyone who can reach port 8790 can open connections. Before this, 32 idle sockets
got every real requester `busy` for as long as they were held. The rules, after OpenSSH's sshd
and nginx/HAProxy's slow-client handling:

1. A connection must complete its first frame (a `hello`, ~530 bytes, one round trip) within
   FIRST_FRAME_TIMEOUT, far shorter than the per-phase timeout: idle and slowloris sockets are
   dropped after seconds, not held for a whole phase.
2. One source (an IPv4 address, an IPv6 /64) holds at most PER_SOURCE_MAX_UNAUTHENTICATED slots.
3. When the table (MAX_UNAUTHENTICATED) or the source's share is full, the newcomer is admitted
   and room is made by dropping a connection that has *not yet sent a valid hello*: from the
   source holding the most such connections, its oldest first. A connection that sent a valid
   hello is never dropped to make room; only when every slot holds one is the newcomer refused
   with `busy`.
4. SRP work (computing B) is only done for a valid hello: the table decides before the
   enrollment driver runs at all, and a first frame that is not a valid hello is answered with
   its error code here, without reading the appliance's state.

5. A source that misbehaves (a first frame that is not a valid hello, no hello within the
   deadline, a connection dropped to make room, a connection closed before its first frame) accrues
   a penalty, after OpenSSH 9.8's `PerSourcePenalties`; once a source's penalty reaches
   PENALTY_MIN seconds its new connections are answered `busy` (with retry_after) and closed the
   moment they are accepted (DoorSocket.accept in agent/frontdoor_asyncio.py, before asyncio makes
   a transport for them), taking no slot, no timer and no parsing, until the penalty has run out.
   A requester that says hello at once never accrues any.

6. After a valid `hello` (the SRP phase, until the proof): a source holds at most
   PER_SOURCE_MAX_POST_HELLO such slots and all sources together MAX_POST_HELLO, so
   MAX_UNAUTHENTICATED - MAX_POST_HELLO slots are always left for connections still on their
   first frame. A hello beyond its source's share is refused (`busy`); a hello that finds the
   post-hello share full is admitted by evicting the oldest post-hello connection that has not
   sent its proof, from the source holding the most (a proof in flight is never evicted). Each
   source's hellos are rate-limited (HELLO_BURST, then one per HELLO_INTERVAL), checked before any
   SRP work. A connection that says hello and then stalls past the phase deadline, or closes,
   accrues a penalty like a pre-hello one. Sources in the operator's exempt list (a shared NAT of
   requesters, OpenSSH's `PerSourcePenaltyExemptList`) accrue none.

A flood therefore costs the attacker a socket per slot and buys it seconds, then costs the
appliance one accept and one small write per connection while its sources sit out their penalty;
a requester that says hello at once is admitted past the flood and keeps its slot.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from firsttrust.errors import FirsttrustError, UnexpectedFrame
from firsttrust.framing import FrameDecoder, encode_error
from firsttrust.limits import MAX_RETRY_AFTER

# --- the limits, with their reasons and precedents ----------------------------------------------

# Deadline for a connection's first complete frame. A requester sends `hello` as soon as TCP is
# up: one round trip, ~530 bytes. 5 s covers a slow WAN and a loaded requester many times over,
# while an idle or byte-a-second (slowloris) socket loses its slot after 5 s instead of a whole
# PHASE_TIMEOUT (15 s). Precedents: OpenSSH `LoginGraceTime 120` bounds the whole login, not the
# first packet; nginx `client_header_timeout 60s` and HAProxy `timeout http-request` (commonly
# 5-10 s, the HAProxy docs' advice against slowloris) bound the request head, which is what our
# first frame is.
FIRST_FRAME_TIMEOUT = 5.0

# Connections without a verified SRP proof, in total. One appliance has one requester; even a
# batch enrolls each appliance over one connection, so a handful would do. 64 leaves room for
# retries and lab scripts while keeping what a flood can make us hold small (each slot is a
# socket and ~10 KiB of buffers). OpenSSH `MaxStartups 10:30:100` starts dropping at 10 and
# refuses every new unauthenticated connection at 100; we drop pre-hello connections instead of
# refusing newcomers, so a full table does not lock the door.
MAX_UNAUTHENTICATED = 64

# Slots one source may hold. A requester needs one (two while a retry overlaps a dying attempt);
# 8 lets a NAT'ed lab share an address while one source can take at most 1/8 of the table.
# OpenSSH `PerSourceMaxStartups` (off by default; 10 in hardened configs) and
# `PerSourceNetBlockSize 32:128` (the key below uses /64 for IPv6: a host gets a /64, so a
# per-address key would let one host use 2^64 sources).
PER_SOURCE_MAX_UNAUTHENTICATED = 8

# IPv6 sources are grouped by this prefix (RFC 7421: a /64 is one link's subnet, typically one host
# or one customer). IPv4 sources are single addresses.
IPV6_SOURCE_PREFIX = 64

# Per-source penalties, after OpenSSH 9.8's `PerSourcePenalties` (defaults there: authfail:5
# noauth:1 grace-exceeded:10 min:15 max:600). Seconds a source accrues per offence:
PENALTY_SECONDS = {
    "garbage": 5.0,  # a first frame that is not a valid hello, or garbage after it (OpenSSH's authfail)
    "too_slow": 10.0,  # no complete first frame within FIRST_FRAME_TIMEOUT (grace-exceeded)
    "stalled": 10.0,  # a hello, then no proof within the phase timeout (grace-exceeded)
    "evicted": 1.0,  # dropped, before its hello or its proof, to make room (noauth)
    "no_hello": 1.0,  # closed by the peer before its first frame was complete (noauth)
    "abandoned": 1.0,  # a hello (SRP work done for it), then closed by the peer before its proof (noauth)
    "hello_rate": 1.0,  # a hello faster than the source's hello rate (refused before SRP work)
}
# A source is refused once its accrued penalty reaches PENALTY_MIN seconds (so one mishap, a
# requester restarted mid-hello, never locks anyone out), for as long as the penalty lasts, at most
# PENALTY_MAX seconds. OpenSSH's max is 600 s; an appliance's enrollment window is short and its
# requester retries for 5 minutes, so a source behind the same NAT as an attacker waits at most 2.
PENALTY_MIN = 15.0
PENALTY_MAX = 120.0
# Slots for connections that said hello and have not had their proof verified yet: the SRP
# phase, where the agent has computed B for the peer and waits up to PHASE_TIMEOUT for its proof.
# Half the table: a flood of hellos (each valid, A = 2 costs the attacker nothing) can never take
# the slots that new connections need to say their own hello. A requester needs one (two while a
# retry overlaps its dying attempt), so one source holds at most 2: 20 sources of 8 stalls each
# (issue #25) hold 40 at most, and a hello beyond MAX_POST_HELLO evicts the oldest stall instead
# of being refused. OpenSSH has no per-phase split (its unauthenticated connections are one
# MaxStartups pool); nginx's limit_conn per zone is the closest: a cap per key inside the total.
MAX_POST_HELLO = 32
PER_SOURCE_MAX_POST_HELLO = 2

# Hellos per source: a bucket of HELLO_BURST, refilled one per HELLO_INTERVAL seconds, checked
# before any SRP work (computing B, ~5 ms with the OpenSSL backend). A requester sends one hello
# per attempt; retrying on `busy` under a flood (requester/retry.py: 0.25, 0.5, 1, 2, 4, 8, then
# every 10 s) it sends 7 in its first 16 s and one per 10 s after, and a re-run of the same
# command starts that again: 16 covers both with room for the lockout's 10 failed guesses, and a
# refill every 2 s stays above any requester's steady rate (one per 5 s after its back-off). A
# hello-and-close flood (3,668 hellos in 15 s from one source before this) gets 16 computations,
# then one per 2 s, and accrues `hello_rate` penalties until it is refused at accept.
# Precedent: nginx `limit_req zone=... rate=30r/m burst=16`; OpenSSH has no rate, only penalties.
HELLO_BURST = 16
HELLO_INTERVAL = 2.0

# Sources remembered at once (OpenSSH max-sources4 65536). When full, expired penalties are
# forgotten first, then the one closest to expiry ("permissive" overflow: never refuse because
# the table is full).
PENALTY_SOURCES_MAX = 4096


@functools.lru_cache(maxsize=1024)
def source_key(address: str) -> str:
    """The per-source key of a peer address: the IPv4 address; for IPv6 its /64 network; an
    IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) counts as its IPv4
    address. Anything that is not an IP address (a UNIX socket) is its own key.

    >>> source_key("::ffff:10.0.0.5"), source_key("2001:db8:1:2:aaaa::1")
    ('10.0.0.5', '2001:db8:1:2::/64')
    """
    import ipaddress  # here, not at module level: ~2 ms of the agent's start before READY=1

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


# --- the table ----------------------------------------------------------------------------------


class Entry:  # plain classes, not dataclasses: ~0.6 ms each to define (agent start-up)
    """One connection's slot. `hello` once it sent a valid hello (then it is only evicted to make
    room for another hello, never for a new connection); `proof` once its complete proof arrived
    (then it is never evicted). Compared by identity."""

    __slots__ = ("source", "admitted_at", "deadline", "hello", "held", "proof", "hello_at")

    def __init__(self, source: str, admitted_at: float, deadline: float, hello: bool = False,
                 held: bool = True) -> None:
        self.source, self.admitted_at, self.deadline, self.hello, self.held = (source, admitted_at, deadline,
                                                                                hello, held)
        self.proof = False
        self.hello_at = admitted_at

    def __repr__(self) -> str:
        return (f"Entry(source={self.source!r}, admitted_at={self.admitted_at!r}, deadline={self.deadline!r}, "
                f"hello={self.hello!r}, held={self.held!r}, proof={self.proof!r})")


class Penalty:
    """A source's penalty: it ends at `until` (monotonic seconds); `accrued` sums the seconds of
    the offences since it began; `blocked` once that reached PENALTY_MIN, and then until it ends."""

    __slots__ = ("until", "accrued", "blocked")

    def __init__(self, until: float, accrued: float = 0.0, blocked: bool = False) -> None:
        self.until, self.accrued, self.blocked = until, accrued, blocked

    def __repr__(self) -> str:
        return f"Penalty(until={self.until!r}, accrued={self.accrued!r}, blocked={self.blocked!r})"


class Admission(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """What `FrontDoor.admit` (or `hello`) decided: the newcomer's entry (None: refuse it with
    `busy`, and `retry_after` seconds when the source should wait that long) and the entries
    dropped to make room (close each with `busy`)."""

    entry: Entry | None
    evicted: tuple[Entry, ...] = ()
    retry_after: int | None = None


@dataclass
class FrontDoor:
    """The pre-authentication table of one listener.

    Args:
        max_unauthenticated: slots in total (MAX_UNAUTHENTICATED).
        per_source: slots one source may hold (PER_SOURCE_MAX_UNAUTHENTICATED).
        first_frame_timeout: seconds a new entry has to complete its first frame.
        clock: monotonic seconds; injectable for tests.
    """

    max_unauthenticated: int = MAX_UNAUTHENTICATED
    per_source: int = PER_SOURCE_MAX_UNAUTHENTICATED
    first_frame_timeout: float = FIRST_FRAME_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    max_post_hello: int = MAX_POST_HELLO
    per_source_post_hello: int = PER_SOURCE_MAX_POST_HELLO
    # Networks whose sources never accrue a penalty (agent.toml `penalty_exempt`).
    exempt: tuple = ()
    hello_burst: int = HELLO_BURST
    hello_interval: float = HELLO_INTERVAL
    entries: list[Entry] = field(default_factory=list)  # oldest first
    evictions: int = 0
    refusals: int = 0
    penalty_refusals: int = 0
    hello_refusals: int = 0
    penalties: dict[str, "Penalty"] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)  # entries per source
    _pre_hello: dict[str, int] = field(default_factory=dict)  # entries without a hello per source
    _post_hello: dict[str, int] = field(default_factory=dict)  # entries with a hello per source
    _hellos: dict[str, list] = field(default_factory=dict)  # source -> [tokens, at]
    _exempt_cache: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def count(self, source: str) -> int:
        return self._counts.get(source, 0)

    # --- penalties ------------------------------------------------------------------------

    def is_exempt(self, source: str) -> bool:
        """Whether `source` (a source_key) lies in one of the exempt networks."""
        if not self.exempt:
            return False
        known = self._exempt_cache.get(source)
        if known is None:
            known = _in_networks(source, self.exempt)
            if len(self._exempt_cache) >= PENALTY_SOURCES_MAX:
                self._exempt_cache.clear()
            self._exempt_cache[source] = known
        return known

    def penalize(self, source: str, offence: str) -> None:
        """`source` committed `offence` (a PENALTY_SECONDS key): add its seconds to the source's
        penalty (capped at PENALTY_MAX from now); it blocks once it reaches PENALTY_MIN. An
        exempt source accrues nothing."""
        if self.is_exempt(source):
            return
        now = self.clock()
        penalty = self.penalties.get(source)
        if penalty is None or penalty.until <= now:
            if penalty is None and len(self.penalties) >= PENALTY_SOURCES_MAX:
                self._forget_a_penalty(now)
            penalty = self.penalties[source] = Penalty(now)
        seconds = PENALTY_SECONDS[offence]
        penalty.until = min(penalty.until + seconds, now + PENALTY_MAX)
        penalty.accrued += seconds
        if penalty.accrued >= PENALTY_MIN:
            penalty.blocked = True

    def blocked_for(self, source: str) -> float:
        """Seconds `source` stays refused (0: it is not)."""
        penalty = self.penalties.get(source)
        if penalty is None or not penalty.blocked:
            return 0.0
        left = penalty.until - self.clock()
        if left <= 0:
            del self.penalties[source]
            return 0.0
        return left

    def _forget_a_penalty(self, now: float) -> None:
        expired = [source for source, p in self.penalties.items() if p.until <= now]
        for source in expired:
            del self.penalties[source]
        if not expired:
            del self.penalties[min(self.penalties, key=lambda source: self.penalties[source].until)]

    def admit(self, source: str) -> Admission:
        """A connection from `source` arrived: admit it, making room if needed.

        Returns:
            The Admission. Room is made by evicting a pre-hello entry: the source's own oldest
            when the source is at its cap, else the oldest of the source holding the most
            pre-hello entries. The newcomer is refused (entry None) only when no pre-hello entry
            can be evicted: every slot concerned belongs to a connection that sent a valid hello.
        """
        evicted: list[Entry] = []
        if self.count(source) >= self.per_source:
            victim = self._oldest_pre_hello(source)
            if victim is None:
                self.refusals += 1
                return Admission(None)
            evicted.append(victim)
            self._remove(victim)
        if len(self.entries) >= self.max_unauthenticated:
            victim = self._victim()
            # (never after a per-source eviction: that one already made room)
            if victim is None:
                self.refusals += 1
                return Admission(None)
            evicted.append(victim)
            self._remove(victim)
        now = self.clock()
        entry = Entry(source, now, now + self.first_frame_timeout)
        self.entries.append(entry)
        self._counts[source] = self._counts.get(source, 0) + 1
        self._pre_hello[source] = self._pre_hello.get(source, 0) + 1
        for victim in evicted:
            self.penalize(victim.source, "evicted")
        self.evictions += len(evicted)
        return Admission(entry, tuple(evicted))

    def hello(self, entry: Entry) -> Admission:
        """The entry's first frame is a valid hello: may the agent do SRP work for it?

        Returns:
            Admission(entry) when it may (the entry now holds a post-hello slot, and the
            entries evicted to make room for it, if any); Admission(None, retry_after=...) when
            the source's hello rate is exceeded (the source accrues `hello_rate`); Admission(None)
            when the source holds PER_SOURCE_MAX_POST_HELLO post-hello slots already, or when
            every post-hello slot has a proof in flight. A refused entry keeps its pre-hello slot
            until the caller releases it.
        """
        source = entry.source
        wait = self._take_hello_token(source)
        if wait:
            self.hello_refusals += 1
            self.penalize(source, "hello_rate")
            return Admission(None, retry_after=max(1, math.ceil(wait)))
        if self._post_hello.get(source, 0) >= self.per_source_post_hello:
            self.hello_refusals += 1
            return Admission(None)
        evicted: tuple[Entry, ...] = ()
        if sum(self._post_hello.values()) >= self.max_post_hello:
            victim = self._post_hello_victim()
            if victim is None:
                self.hello_refusals += 1
                return Admission(None)
            self._remove(victim)
            self.penalize(victim.source, "evicted")
            self.evictions += 1
            evicted = (victim,)
        self.mark_hello(entry)
        return Admission(entry, evicted)

    def mark_hello(self, entry: Entry) -> None:
        """The entry's first frame is a valid hello: from now on it is not evicted for a new
        connection (only, before its proof, for another hello: `hello`)."""
        if not entry.hello and entry.held:
            _decrement(self._pre_hello, entry.source)
            self._post_hello[entry.source] = self._post_hello.get(entry.source, 0) + 1
        entry.hello = True
        entry.hello_at = self.clock()

    def mark_proof(self, entry: Entry) -> None:
        """The entry's complete proof arrived: from now on it is never evicted."""
        entry.proof = True

    def post_hello(self) -> int:
        """Entries holding a post-hello slot."""
        return sum(self._post_hello.values())

    def _take_hello_token(self, source: str) -> float:
        """Take one of `source`'s hello tokens: 0 when there was one, else the seconds until the
        next. The bucket starts full; buckets are forgotten when PENALTY_SOURCES_MAX are held
        (a forgotten bucket is a full one: permissive, as the penalty table)."""
        now = self.clock()
        bucket = self._hellos.get(source)
        if bucket is None:
            if len(self._hellos) >= PENALTY_SOURCES_MAX:
                self._hellos.clear()
            bucket = self._hellos[source] = [float(self.hello_burst), now]
        tokens = min(float(self.hello_burst), bucket[0] + (now - bucket[1]) / self.hello_interval)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) * self.hello_interval

    def release(self, entry: Entry) -> None:
        """Free the entry's slot (authenticated, closed, refused, evicted). Idempotent."""
        if entry.held:
            self._remove(entry)

    def remaining(self, entry: Entry) -> float:
        """Seconds left before `entry`'s first-frame deadline (0 when passed)."""
        return max(0.0, entry.deadline - self.clock())

    def overdue(self) -> list[Entry]:
        """Pre-hello entries whose first-frame deadline has passed."""
        now = self.clock()
        return [e for e in self.entries if not e.hello and now >= e.deadline]

    def _remove(self, entry: Entry) -> None:
        entry.held = False
        self.entries.remove(entry)
        _decrement(self._counts, entry.source)
        if not entry.hello:
            _decrement(self._pre_hello, entry.source)
        else:
            _decrement(self._post_hello, entry.source)

    def _post_hello_victim(self) -> Entry | None:
        """The oldest post-hello entry without a proof, of the source holding the most of them."""
        waiting: dict[str, int] = {}
        for entry in self.entries:
            if entry.hello and not entry.proof:
                waiting[entry.source] = waiting.get(entry.source, 0) + 1
        if not waiting:
            return None
        most = max(waiting.values())
        return min((e for e in self.entries if e.hello and not e.proof and waiting[e.source] == most),
                   key=lambda e: e.hello_at)

    def _oldest_pre_hello(self, source: str | None = None) -> Entry | None:
        for entry in self.entries:  # oldest first
            if not entry.hello and (source is None or entry.source == source):
                return entry
        return None

    def _victim(self) -> Entry | None:
        if not self._pre_hello:
            return None
        most = max(self._pre_hello.values())
        # Among the sources holding the most, the one whose oldest entry is oldest.
        for entry in self.entries:
            if not entry.hello and self._pre_hello[entry.source] == most:
                return entry
        return None  # pragma: no cover - unreachable: some source holds `most`


def _in_networks(source: str, networks: tuple) -> bool:
    import ipaddress

    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return False
    # The key is an IPv4 address or an IPv6 /64: an entry inside it (an IPv6 address, ::1)
    # exempts that /64, the granularity every penalty has; a key inside an entry is exempt too.
    return any(net.version == n.version and (net.subnet_of(n) or n.subnet_of(net)) for n in networks)


def parse_networks(texts) -> tuple:
    """agent.toml `penalty_exempt`: addresses or CIDR networks, as ipaddress networks. An
    IPv4-mapped IPv6 entry (::ffff:10.0.0.5, as a dual-stack listener shows an IPv4 peer) is
    taken as the IPv4 address or network it maps, the way source_key counts such a peer.

    Raises:
        ValueError: an entry is not an address or network.
    """
    import ipaddress

    networks = []
    for text in texts:
        network = ipaddress.ip_network(str(text), strict=False)
        mapped = network.network_address.ipv4_mapped if network.version == 6 else None
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        networks.append(network)
    return tuple(networks)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


# --- the first frame ----------------------------------------------------------------------------


class FirstFrame(NamedTuple):
    """How a connection's first frame ended: a valid hello, an error (code, message: answer with
    an error frame), or the peer closed before completing it (eof)."""

    hello: bool
    code: str | None = None
    message: str | None = None
    eof: bool = False


class FirstFrameWatch:
    """Watches a copy of a connection's first bytes until its first frame is complete.

    `feed(data)` returns None while the frame is incomplete, then a FirstFrame once (later calls
    return None). It only keeps bytes up to the end of the first frame, bounded by the frame cap.
    """

    def __init__(self) -> None:
        self._decoder: FrameDecoder | None = FrameDecoder()

    @property
    def done(self) -> bool:
        return self._decoder is None

    def feed(self, data: bytes) -> FirstFrame | None:
        if self._decoder is None:
            return None
        try:
            self._decoder.feed(data)
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            if frame.type != "hello":
                raise UnexpectedFrame(f"got {frame.type} while expecting hello (state await_hello)")
            from firsttrust.messages import validate  # with the first hello: not part of start-up

            validate(frame)
            outcome = FirstFrame(hello=True)
        except FirsttrustError as exc:
            outcome = FirstFrame(hello=False, code=exc.code, message=str(exc))
        self._decoder = None
        return outcome

    def eof(self) -> FirstFrame | None:
        if self._decoder is None:
            return None
        self._decoder = None
        return FirstFrame(hello=False, eof=True)


# --- what the door answers -----------------------------------------------------------------------


def penalized(seconds: float) -> bytes:
    wait = min(MAX_RETRY_AFTER, max(1, math.ceil(seconds)))
    return encode_error("busy", f"this address sent bad or stalled connections; refused for {wait} s", wait)


def hello_refused(retry_after: int | None) -> bytes:
    if retry_after:
        return encode_error("busy", f"too many hellos from this address; retry in {retry_after} s", retry_after)
    return encode_error("busy", "too many connections in the SRP phase from this address; retry later")


# What a refused, evicted or too slow connection is told before it is closed.
FULL = encode_error("busy", "too many unauthenticated connections; retry later")
EVICTED = encode_error("busy", "dropped to make room: no hello yet while the appliance is busy; retry at once")
TOO_SLOW = encode_error("timeout", "no hello within the first-frame deadline")
