"""The commit point of enrollment: where the requester is authorized, and nowhere else.

Like a database's write-ahead record, an enrollment's grant becomes true in exactly one write:

    prepare_grant   validates everything that can fail (the verifier is still armed, the SSH key
                    parses, the account and its home exist and are safe, the disk takes a write)
                    and touches nothing. A refusal leaves the appliance armed: same secrets,
                    failure charge refunded by the caller, nothing authorized.
    commit_grant    ONE atomic write of state.json: phase = enrolled, the grant recorded in
                    `enrollment`, the SRP verifier and SEC-B digest dropped, failures cleared.
    apply_grant     makes what lives outside state.json agree with it, idempotently: the
                    requester's certificate in authorized.json (the API's trust), its SSH key in
                    the account's authorized_keys, SEC-B removed. Run right after the commit and
                    again at every start (`repair_at_start`): a crash between the commit and the
                    end of apply is rolled forward, never back.

Before the commit nothing is granted (no key in authorized.json or authorized_keys); after it
everything is, at the latest when the agent next starts. `status` says which.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from firsttrust.common.files import clean_stale_temps
from firsttrust.identity import certificate_pem

from .config import AgentConfig
from .errors import AgentError
from .sshkeys import (
    SSHKeyError,
    authorized_keys_target,
    has_authorized_key,
    install_authorized_key,
    parse_public_key_line,
    remove_stale_authorized_keys_temps,
)
from .state import AgentState, StateDir

if TYPE_CHECKING:  # the enrollment code loads with the first connection (agent/server.py)
    from firsttrust.enrollment import Authorization

# The commit rewrites state.json (a few KiB); refuse to start it with less room than this, so a
# full disk is a clean refusal before the commit rather than a failed write at it.
MIN_FREE_BYTES = 1024 * 1024


class GrantRefused(AgentError):
    """The grant cannot be committed; `code` is the error code sent to the requester."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Grant(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """A prepared grant: every check passed, nothing written yet."""

    authorization: Authorization
    ssh_key: str | None
    account: str | None
    state: AgentState  # as prepare read and checked it: what the commit writes over


def prepare_grant(config: AgentConfig, store: StateDir, verifier_hex: str, authorization: Authorization) -> Grant:
    """Validate everything the commit and the apply step need. Writes nothing.

    Raises:
        GrantRefused: `already_enrolled` (the verifier is no longer armed: another requester won),
            `ssh_key_rejected` (bad key, missing account or home, unsafe ~/.ssh),
            `commit_failed` (the state directory cannot take the write).
    """
    state = store.load()
    if state is None or not state.armed or state.srp_verifier != verifier_hex:
        raise GrantRefused("already_enrolled", "another requester enrolled first; SRP enrollment is closed")
    ssh_key = account = None
    if authorization.ssh_key is not None:
        try:
            ssh_key = parse_public_key_line(authorization.ssh_key)
            authorized_keys_target(config.account)
        except SSHKeyError as exc:
            raise GrantRefused("ssh_key_rejected", str(exc)) from None
        account = config.account
    try:
        free = os.statvfs(store.path)
        writable = os.access(store.path, os.W_OK)
    except OSError as exc:
        raise GrantRefused("commit_failed", f"the state directory is unusable: {exc.strerror}") from None
    if not writable or free.f_bavail * free.f_frsize < MIN_FREE_BYTES:
        raise GrantRefused("commit_failed", "the appliance's state directory is read-only or full")
    return Grant(authorization, ssh_key, account, state)


def commit_grant(store: StateDir, grant: Grant) -> AgentState:
    """The one write that enrolls. Returns the committed state.

    The caller holds the lock it held for `prepare_grant`, so the state it validated (and
    read, once: `grant.state`) is the state it commits over.

    Raises:
        GrantRefused: `commit_failed` if state.json could not be written (nothing was committed).
    """
    state = grant.state
    authorization = grant.authorization
    state.phase, state.enrolled_at, state.enrolled_via = "enrolled", authorization.enrolled_at, "srp"
    state.enrollment = {
        "pin": authorization.requester_pin,
        "name": authorization.name,
        "certificate": certificate_pem(authorization.requester_certificate).decode("ascii"),
        "ssh_key": grant.ssh_key,
        "account": grant.account,
    }
    state.srp_salt = state.srp_verifier = state.sec_b_sha256 = None
    state.failures = 0  # also clears this attempt's own charge: no separate refund write
    try:
        store.save(state)
    except OSError as exc:
        raise GrantRefused("commit_failed", f"could not store the enrollment: {exc.strerror}") from None
    return state


def apply_grant(store: StateDir, state: AgentState, *, clock: Callable[[], float] = time.time) -> list[str]:
    """Make authorized.json, authorized_keys and SEC-B agree with a committed enrollment.
    Idempotent; returns what it had to do (empty when everything already agreed).

    Raises:
        SSHKeyError: the SSH key cannot be installed (the key on the API is applied first; the
            next start tries again).
    """
    done: list[str] = []
    grant = state.enrollment if state.phase == "enrolled" else None
    if grant:
        _, added = store.authorize(grant["certificate"].encode("ascii"), name=grant["name"], source="enrollment",
                                   clock=clock, rebuilt_at_start=True)
        if added:
            done.append(f"authorized the enrolled requester's key {grant['pin']} on the API")
        if grant.get("ssh_key") and grant.get("account"):
            if not has_authorized_key(grant["account"], grant["ssh_key"]):
                install_authorized_key(grant["account"], grant["ssh_key"])
                done.append(f"installed the enrolled requester's SSH key for {grant['account']!r}")
    if state.phase == "enrolled" and store.sec_b_path.exists():
        store.remove_sec_b()
        done.append("removed a leftover SEC-B")
    return done


def repair_at_start(store: StateDir, *, clock: Callable[[], float] = time.time) -> list[str]:
    """At every start, before serving: finish a committed enrollment that a crash cut short,
    and remove what an interrupted write left behind. Records what it did in state.json
    (`repaired`, shown by `status`) when it did anything.
    """
    state = store.load()
    if state is None:
        return []
    done = []
    if clean_stale_temps(store.path):
        done.append("removed temporary files of an interrupted write")
    account = (state.enrollment or {}).get("account") if state.phase == "enrolled" else None
    if account and remove_stale_authorized_keys_temps(account):
        done.append(f"removed temporary files of an interrupted write to {account!r}'s authorized_keys")
    try:
        done += apply_grant(store, state, clock=clock)
    except SSHKeyError as exc:
        done.append(f"could not install the enrolled requester's SSH key: {exc}")
    if done:
        state = store.load() or state
        state.repaired = {"at": clock(), "actions": done}
        store.save(state)
    return done
