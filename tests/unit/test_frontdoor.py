"""agent/frontdoor.py: the pre-authentication table, driven with sources and a fake clock only."""

from __future__ import annotations

import base64

import pytest

from firsttrust.agent import frontdoor
from firsttrust.agent.frontdoor import (
    FIRST_FRAME_TIMEOUT,
    PENALTY_MAX,
    PENALTY_MIN,
    PENALTY_SECONDS,
    FirstFrameWatch,
    FrontDoor,
    source_key,
)
from firsttrust.framing import HEADER, encode_error, encode_frame
from firsttrust.messages import SRP_VALUE_BYTES


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def door(total: int = 4, per_source: int = 2) -> tuple[FrontDoor, Clock]:
    clock = Clock()
    return FrontDoor(max_unauthenticated=total, per_source=per_source, first_frame_timeout=5.0, clock=clock), clock


HELLO = encode_frame("hello", {"A": base64.b64encode(b"\x01" * SRP_VALUE_BYTES).decode()})


# --- source_key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address, key", [
    ("10.0.0.5", "10.0.0.5"),
    ("127.0.0.2", "127.0.0.2"),
    ("::ffff:10.0.0.5", "10.0.0.5"),  # IPv4-mapped: the IPv4 peer of a dual-stack listener
    ("::ffff:a00:5", "10.0.0.5"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::1", "::/64"),
    ("unknown", "unknown"),
])
def test_source_key(address, key):
    assert source_key(address) == key


def test_one_ipv6_host_rotating_addresses_in_its_64_is_one_source():
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:ffff:ffff:ffff")
    assert source_key("2001:db8::1") != source_key("2001:db8:0:1::1")
    assert source_key("10.0.0.5") != source_key("10.0.0.6")


# --- admission, per-source cap, eviction --------------------------------------------------------


def test_admits_until_full():
    table, _ = door(total=4, per_source=4)
    for source in "abcd":
        assert table.admit(source).entry is not None
    assert len(table) == 4 and table.count("a") == 1


def test_per_source_cap_evicts_the_sources_own_oldest_pre_hello():
    table, clock = door(total=10, per_source=2)
    first = table.admit("a").entry
    clock.now += 1
    second = table.admit("a").entry
    other = table.admit("b").entry
    clock.now += 1
    admission = table.admit("a")
    assert admission.entry is not None and admission.evicted == (first,)
    assert table.count("a") == 2 and not first.held and second.held and other.held


def test_per_source_cap_refuses_when_the_source_holds_only_hellos():
    table, _ = door(total=10, per_source=2)
    for _ in range(2):
        table.mark_hello(table.admit("a").entry)
    admission = table.admit("a")
    assert admission.entry is None and admission.evicted == ()
    assert table.count("a") == 2 and table.refusals == 1
    assert table.admit("b").entry is not None  # other sources are not affected


def test_full_table_evicts_oldest_pre_hello_of_the_source_holding_most():
    table, clock = door(total=4, per_source=4)
    b_old = table.admit("b").entry
    clock.now += 1
    a1 = table.admit("a").entry
    a2 = table.admit("a").entry
    c = table.admit("c").entry
    admission = table.admit("legit")
    assert admission.evicted == (a1,)  # "a" holds most; its oldest, though "b" is older
    assert a2.held and b_old.held and c.held and admission.entry.held
    assert table.evictions == 1


def test_a_hello_is_never_evicted_by_a_flood():
    table, clock = door(total=4, per_source=4)
    legit = table.admit("legit").entry
    table.mark_hello(legit)
    for i in range(1000):  # a flood from many sources, each newcomer making room for itself
        clock.now += 0.001
        admission = table.admit(f"flood-{i % 20}")
        assert admission.entry is not None
        assert legit not in admission.evicted
    assert legit.held and len(table) == 4


def test_a_pre_hello_newcomer_from_a_quiet_source_survives_a_flood_until_its_hello():
    table, clock = door(total=8, per_source=8)
    for i in range(8):
        table.admit(f"flood-{i % 2}")
    legit = table.admit("legit").entry
    for i in range(200):
        clock.now += 0.001
        table.admit(f"flood-{i % 2}")
    assert legit.held  # the flood's sources always hold more: they lose their own slots
    table.mark_hello(legit)


def test_full_of_hellos_refuses_the_newcomer_and_evicts_nobody():
    table, _ = door(total=2, per_source=2)
    for source in "ab":
        table.mark_hello(table.admit(source).entry)
    admission = table.admit("c")
    assert admission.entry is None and admission.evicted == () and len(table) == 2


def test_release_is_idempotent_and_frees_the_slot():
    table, _ = door(total=1, per_source=1)
    entry = table.admit("a").entry
    table.release(entry)
    table.release(entry)
    assert len(table) == 0 and not entry.held
    assert table.admit("a").evicted == ()


def test_evicted_entry_release_does_not_free_anyone_else():
    table, _ = door(total=1, per_source=1)
    old = table.admit("a").entry
    new = table.admit("b").entry
    table.release(old)  # the evicted connection's handler finishing
    assert len(table) == 1 and new.held


# --- first-frame deadline -----------------------------------------------------------------------


def test_first_frame_deadline_counts_from_admission():
    table, clock = door()
    entry = table.admit("a").entry
    assert table.remaining(entry) == 5.0
    clock.now += 4.9
    assert table.overdue() == [] and table.remaining(entry) == pytest.approx(0.1)
    clock.now += 0.1
    assert table.overdue() == [entry] and table.remaining(entry) == 0.0


def test_a_hello_is_never_overdue():
    table, clock = door()
    entry = table.admit("a").entry
    table.mark_hello(entry)
    clock.now += 60
    assert table.overdue() == []


def test_the_default_first_frame_deadline_is_shorter_than_a_phase():
    from firsttrust import limits
    assert FIRST_FRAME_TIMEOUT < limits.PHASE_TIMEOUT


# --- per-source penalties ----------------------------------------------------------------------


def test_one_offence_of_each_kind_never_blocks_a_source():
    for offence in PENALTY_SECONDS:
        table, _ = door()
        table.penalize("a", offence)
        assert table.blocked_for("a") == 0, offence


def test_garbage_repeated_blocks_the_source_once_its_penalty_reaches_the_minimum():
    table, clock = door()
    offences = 0
    for offences in range(1, 10):
        table.penalize("a", "garbage")
        if table.blocked_for("a"):
            break
    assert table.blocked_for("a") > 0
    assert offences * PENALTY_SECONDS["garbage"] >= PENALTY_MIN > (offences - 1) * PENALTY_SECONDS["garbage"]
    assert table.blocked_for("b") == 0  # other sources are not affected
    left = table.blocked_for("a")
    clock.now += left - 0.5
    assert table.blocked_for("a") > 0  # blocked for the whole accrued penalty
    clock.now += 1.0
    assert table.blocked_for("a") == 0 and "a" not in table.penalties  # then forgotten


def test_a_penalty_that_ran_out_starts_again_from_zero():
    table, clock = door()
    for _ in range(2):
        table.penalize("a", "garbage")
    clock.now += 2 * PENALTY_SECONDS["garbage"]  # both offences have run out
    table.penalize("a", "garbage")
    assert table.blocked_for("a") == 0


def test_a_penalty_never_lasts_longer_than_the_maximum():
    table, _ = door()
    for _ in range(1000):
        table.penalize("a", "too_slow")
    assert PENALTY_MIN <= table.blocked_for("a") <= PENALTY_MAX


def test_the_source_of_an_evicted_connection_accrues_the_eviction_penalty():
    table, _ = door(total=10, per_source=1)
    table.admit("a")
    assert "a" not in table.penalties
    assert table.admit("a").evicted
    assert table.penalties["a"].until - table.clock() == PENALTY_SECONDS["evicted"]


def test_a_source_whose_connections_say_hello_accrues_nothing():
    table, _ = door(total=2, per_source=2)
    for _ in range(100):
        entry = table.admit("legit").entry
        table.mark_hello(entry)
        table.release(entry)
    assert table.penalties == {} and table.blocked_for("legit") == 0


def test_the_penalty_table_is_bounded(monkeypatch):
    monkeypatch.setattr(frontdoor, "PENALTY_SOURCES_MAX", 8)
    table, clock = door()
    for i in range(100):
        clock.now += 0.01
        table.penalize(f"s{i}", "evicted")
    assert len(table.penalties) == 8
    assert "s99" in table.penalties and "s0" not in table.penalties  # the closest to expiry went first


# --- the first frame watch ----------------------------------------------------------------------


def test_watch_reports_a_valid_hello_once_even_byte_by_byte():
    watch = FirstFrameWatch()
    outcomes = [watch.feed(HELLO[i:i + 1]) for i in range(len(HELLO))]
    assert all(o is None for o in outcomes[:-1]) and outcomes[-1].hello
    assert watch.feed(b"more") is None and watch.eof() is None


@pytest.mark.parametrize("data, code", [
    (b"\xff\xff\xff\xff", "frame_too_large"),
    (b"\x16\x03\x01\x02\x00" + bytes(100), "frame_too_large"),
    (HEADER.pack(5) + b"nope!", "malformed_frame"),
    (encode_error("busy", "x"), "unexpected_frame"),  # a known frame, but not a hello
    (encode_frame("hello", {"A": "QQ=="}), "invalid_field"),
])
def test_watch_names_what_is_wrong_with_a_first_frame(data, code):
    outcome = FirstFrameWatch().feed(data)
    assert outcome is not None and not outcome.hello and outcome.code == code


def test_watch_eof_before_a_frame():
    watch = FirstFrameWatch()
    assert watch.feed(HELLO[:10]) is None
    outcome = watch.eof()
    assert outcome.eof and not outcome.hello and outcome.code is None


# --- after hello: the post-hello caps, the hello rate, the exempt list (issue #25) ------------


def post_door(total: int = 16, per_source: int = 8, post: int = 4, post_per_source: int = 2, **kw):
    clock = Clock()
    return FrontDoor(max_unauthenticated=total, per_source=per_source, first_frame_timeout=5.0, clock=clock,
                     max_post_hello=post, per_source_post_hello=post_per_source, **kw), clock


def said_hello(table: FrontDoor, source: str):
    return table.hello(table.admit(source).entry)


def test_a_source_holds_at_most_its_share_of_post_hello_slots():
    table, _ = post_door()
    assert all(said_hello(table, "a").entry is not None for _ in range(2))
    refused = said_hello(table, "a")
    assert refused.entry is None and refused.evicted == () and refused.retry_after is None
    assert table.post_hello() == 2 and table.hello_refusals == 1
    assert said_hello(table, "b").entry is not None  # another source is not affected


def test_post_hello_slots_leave_room_for_new_connections():
    from firsttrust.agent.frontdoor import MAX_POST_HELLO, MAX_UNAUTHENTICATED, PER_SOURCE_MAX_POST_HELLO

    assert MAX_POST_HELLO <= MAX_UNAUTHENTICATED // 2 and PER_SOURCE_MAX_POST_HELLO == 2
    table, clock = post_door(total=8, per_source=8, post=4, post_per_source=4)
    for _ in range(4):
        clock.now += 1
        said_hello(table, "flood")
    for _ in range(20):  # new connections still get in: the post-hello share never fills the table
        assert table.admit("other").entry is not None


def test_a_hello_that_finds_the_share_full_evicts_the_oldest_stall_of_the_biggest_source():
    table, clock = post_door(post=4, post_per_source=3)
    first_a = said_hello(table, "a").entry
    clock.now += 1
    said_hello(table, "b")
    clock.now += 1
    said_hello(table, "a")
    clock.now += 1
    said_hello(table, "a")
    clock.now += 1
    verdict = said_hello(table, "legit")
    assert verdict.entry is not None and verdict.evicted == (first_a,)
    assert not first_a.held and table.post_hello() == 4 and table.evictions == 1
    assert table.penalties["a"].accrued == PENALTY_SECONDS["evicted"]


def test_a_proof_in_flight_is_never_evicted():
    table, clock = post_door(post=2, post_per_source=2)
    proofs = [said_hello(table, "a").entry for _ in range(2)]
    for entry in proofs:
        table.mark_proof(entry)
    verdict = said_hello(table, "legit")
    assert verdict.entry is None and verdict.evicted == ()  # refused: nothing may be evicted
    assert all(entry.held for entry in proofs)


def test_the_hello_rate_refuses_past_the_burst_with_retry_after_and_refills():
    from firsttrust.agent.frontdoor import HELLO_BURST, HELLO_INTERVAL

    table, clock = post_door(total=64, per_source=64, post=64, post_per_source=64)
    for _ in range(HELLO_BURST):
        entry = said_hello(table, "a").entry
        assert entry is not None
        table.release(entry)
    refused = said_hello(table, "a")
    assert refused.entry is None and refused.retry_after == HELLO_INTERVAL
    assert table.penalties["a"].accrued == PENALTY_SECONDS["hello_rate"]
    assert said_hello(table, "b").entry is not None  # per source
    clock.now += HELLO_INTERVAL
    assert said_hello(table, "a").entry is not None  # one more after one interval


def test_the_hello_rate_never_refuses_a_requester_retrying_on_its_back_off_and_a_rerun():
    """requester/retry.py's schedule (its lower bound, the fastest it can go) for a whole 300 s
    deadline, then the same again (a re-run): no hello is refused by the rate."""
    from firsttrust.requester.retry import DEFAULT_DEADLINE, Backoff

    table, clock = post_door(total=64, per_source=64, post=64, post_per_source=64)
    for _run in range(2):
        start, attempt = clock.now, 0
        while clock.now - start < DEFAULT_DEADLINE:
            verdict = said_hello(table, "requester")
            assert verdict.entry is not None, (attempt, clock.now - start)
            table.release(verdict.entry)
            clock.now += Backoff().delay(attempt, random=lambda: 0.0)
            attempt += 1


def test_an_exempt_source_accrues_no_penalty_and_others_do():
    import ipaddress

    table, _ = post_door(exempt=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/48")))
    for source in ("10.1.2.3", source_key("2001:db8:0:1::5"), "10.2.0.1"):
        for _ in range(3):
            table.penalize(source, "stalled")
    assert table.blocked_for("10.1.2.3") == 0
    assert table.blocked_for(source_key("2001:db8:0:1::5")) == 0
    assert table.blocked_for("10.2.0.1") > 0


def test_an_exempt_ipv6_address_and_a_mapped_ipv4_address_are_exempt_as_the_audit_log_shows_them():
    """An IPv6 requester's key is its /64, so an entry for its address never matched; and the
    dual-stack listener's audit log shows an IPv4 peer as ::ffff:a.b.c.d, which never matched
    the IPv4 key either: both were silently penalized."""
    from firsttrust.agent.frontdoor import parse_networks

    table, _ = post_door(exempt=parse_networks(["2001:db8:0:1::5", "::ffff:10.9.8.7", "::1"]))
    exempt = [source_key("2001:db8:0:1::5"), source_key("::ffff:10.9.8.7"), source_key("::1")]
    others = [source_key("2001:db8:0:2::5"), "10.9.8.6"]
    for source in exempt + others:
        for _ in range(3):
            table.penalize(source, "stalled")
    assert [table.blocked_for(source) for source in exempt] == [0, 0, 0]
    assert all(table.blocked_for(source) > 0 for source in others)


def test_penalty_exempt_in_agent_toml(tmp_path):
    from firsttrust.agent.config import ConfigError, load_config

    path = tmp_path / "agent.toml"
    path.write_text('penalty_exempt = ["192.0.2.0/24", "2001:db8::1"]\n')
    networks = load_config(path).penalty_exempt
    assert [str(n) for n in networks] == ["192.0.2.0/24", "2001:db8::1/128"]
    path.write_text('penalty_exempt = ["not an address"]\n')
    with pytest.raises(ConfigError, match="penalty_exempt"):
        load_config(path)


# --- agent/doorlog.py: the journal's bound under a flood ------------------------------------


def test_the_door_log_writes_at_most_its_bound_per_interval_whatever_the_flood():
    from firsttrust.agent.doorlog import DETAIL_LINES, MAX_LINES_PER_INTERVAL, SUMMARY_SOURCES, DoorLog

    clock, written = Clock(), []
    log = DoorLog("enroll", clock=clock, interval=60.0, write=lambda name, message, **f: written.append((message, f)))
    for i in range(20000):  # every kind of flood at once: many sources, many outcomes, many proofs
        log.count(f"10.0.{i % 251}.{i % 97}", ("abandoned", "stalled", "penalized")[i % 3])
        log.detail(f"10.0.0.{i % 7}")
        if i % 100 == 0:
            log.descriptors_exhausted()
    clock.now += 60.0
    log.count("10.9.9.9", "garbage")  # the next interval begins: the last one is written
    assert len(written) <= MAX_LINES_PER_INTERVAL - DETAIL_LINES  # the details were the caller's to write
    assert log.lines <= MAX_LINES_PER_INTERVAL
    assert any(message.startswith("enroll port: ") and " other sources: " in message for message, _ in written)
    assert sum(1 for message, _ in written if "out of file descriptors" in message) == 1
    assert len([m for m, f in written if "peer" in f]) == SUMMARY_SOURCES + 1
    unlogged = sum(f.get("unlogged", 0) for _, f in written)
    assert unlogged == 20000 - DETAIL_LINES  # proofs past the detail bound are counted, not lost
