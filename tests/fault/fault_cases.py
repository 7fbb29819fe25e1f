"""One kill point = one case: a fresh world, one process killed by strace at the Nth call of a
syscall, then recovery the way an operator would do it, with the invariants checked at each step."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fault_harness import Account, Agent, Checker, Template, World, killed_call

SLOTS = 3  # cases in flight at once, one throwaway account each: a case is mostly waiting on processes

# side -> syscall -> list of Outcome, filled by the tests, printed by conftest's terminal summary
RESULTS: dict[str, dict[str, list]] = {"agent": {}, "requester": {}, "repair": {}}


@dataclass
class Outcome:
    side: str
    syscall: str
    n: int
    killed: bool          # the injected SIGKILL fired (this N is a kill point)
    where: str            # start-up | enrollment | after-enrolled | none
    steps: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def broken(self) -> list[str]:
        """The violations, each once, with every observation point where it was seen."""
        merged: dict[str, list[str]] = {}
        for violation in self.violations:
            text, _, label = violation.rpartition(" [")
            if not text:
                text, label = violation, ""
            merged.setdefault(text, []).append(label.rstrip("]"))
        return [f"{text} [{', '.join(l for l in labels if l)}]" for text, labels in merged.items()]

    def line(self) -> str:
        head = f"{self.side} {self.syscall} N={self.n} [{self.where}] " + "; ".join(self.steps)
        if self.violations:
            return head + "\n      BROKEN: " + "\n      BROKEN: ".join(self.broken())
        return head + " -> ok"


def run_again(world: World, check: Checker, outcome: Outcome) -> None:
    """The operator's recovery: the same `firsttrust enroll` again, then every invariant."""
    second = world.enroll()
    outcome.steps.append(f"run 2 {second.brief()}")
    outcome.violations += check.observe("after-rerun", agent_running=True, after_rerun=True,
                                        check_tmp=True).violations


def restart_and_run_again(world: World, check: Checker, outcome: Outcome, rolled_forward: bool = False) -> None:
    """Start the agent normally; check; with `rolled_forward`, also that an enrolled appliance
    holds the requester's key in authorized.json and authorized_keys; run again; check; stop."""
    again = Agent(world)
    assert again.wait_ready(), f"agent restart failed: {again.log.read_text()[-1500:]}"
    observed = check.observe("after-restart", agent_running=True, check_tmp=True)
    outcome.violations += observed.violations
    if rolled_forward and observed.phase == "enrolled" and not (observed.authorized and observed.ssh_has_key):
        outcome.violations.append("roll forward: enrolled and restarted, but the requester's key is not in "
                                  f"{'authorized.json' if not observed.authorized else 'authorized_keys'} "
                                  "[after-restart]")
    run_again(world, check, outcome)
    again.stop()


def agent_case(root: Path, account: Account, ssh_pub: Path, deadline_flag: bool, template: Template,
               syscall: str, n: int, superseded=lambda: False) -> Outcome:
    """Kill the agent at its Nth `syscall` after READY; run the requester; restart the agent;
    check; run the same requester command again; check."""
    world = World(root, account, ssh_pub, deadline_flag, template)
    check = Checker(world)
    outcome = Outcome("agent", syscall, n, killed=False, where="none")
    try:
        agent = Agent(world)
        assert agent.wait_ready(), f"the agent did not start: {agent.log.read_text()[-1500:]}"
        agent.attach(syscall, n)
        first = world.enroll()
        outcome.steps.append(world.short(f"run 1 {first.brief()}"))
        # a kill on the last sends may land just after the requester returned
        died = agent.wait_dead(2.5 if first.rc == 0 else 3.0)
        exit_status = agent.proc.returncode  # before stop(): the shutdown's own sends may meet the kill
        if died:
            outcome.killed = agent.killed
            outcome.where = "after-enrolled" if first.rc == 0 else "enrollment"
        agent.stop()
        if outcome.killed:
            outcome.steps.insert(0, f"agent killed at {world.short(killed_call(agent.trace))}")
            outcome.violations += check.observe("after-kill", agent_running=False).violations
        else:
            outcome.steps.append("agent not killed")
            if superseded():  # a lower N already ran the unkilled baseline
                return outcome
            if died:
                outcome.violations.append(f"the agent exited ({exit_status}) without being killed")
            if first.rc != 0:
                outcome.violations.append("the enrollment failed with nothing killed")
        restart_and_run_again(world, check, outcome)
    finally:
        world.close()
    outcome.violations += check.secret_violations()
    return outcome


def requester_case(root: Path, account: Account, ssh_pub: Path, deadline_flag: bool, template: Template,
                   syscall: str, n: int, superseded=lambda: False) -> Outcome:
    """Kill the requester at its Nth `syscall` while the agent runs normally; run the same command
    again; check; restart the agent; check."""
    world = World(root, account, ssh_pub, deadline_flag, template)
    check = Checker(world)
    outcome = Outcome("requester", syscall, n, killed=False, where="none")
    try:
        agent = Agent(world)
        assert agent.wait_ready(), f"agent start failed: {agent.log.read_text()[-1500:]}"
        first = world.enroll(inject=(syscall, n))
        outcome.steps.append(world.short(f"run 1 {first.brief()}"))
        outcome.killed = first.killed
        if not first.killed and superseded():
            return outcome
        if not first.killed and first.rc != 0:
            outcome.violations.append("the enrollment failed with nothing killed")
        if first.killed:
            outcome.where = "enrollment"
            time.sleep(0.2)  # let the agent notice the dead peer (refund, slot release)
            outcome.violations += check.observe("after-kill", agent_running=True).violations
        run_again(world, check, outcome)
        # I3 needs a restart when sec-b is still there: the agent must not keep it past a start
        agent.stop()
        if (world.state / "sec-b").exists():
            again = Agent(world)
            assert again.wait_ready(), f"agent restart failed: {again.log.read_text()[-1500:]}"
            outcome.violations += check.observe("after-restart", agent_running=True, check_tmp=True).violations
            again.stop()
    finally:
        world.close()
    outcome.violations += check.secret_violations()
    return outcome


def cut_short_after_commit(world: World, check: Checker) -> list[str]:
    """Bring `world` to where a crash right after the commit leaves it: enroll normally, stop the
    agent, then undo everything the commit does not hold (authorized.json, the account's
    authorized_keys) and put sec-b back, as a kill between `commit_grant`'s rename and the first
    write of `apply_grant` leaves them (the agent sweeps reach that state by a kill; here it is
    the starting point of every repair case, so each N kills the same repair). The requester
    keeps the pin it received. Returns violations of the setup itself."""
    sec_b = world.root / "sec-b.armed"
    shutil.copy2(world.state / "sec-b", sec_b)
    agent = Agent(world)
    assert agent.wait_ready(), f"the agent did not start: {agent.log.read_text()[-1500:]}"
    first = world.enroll()
    agent.stop()
    if first.rc != 0:
        return [f"setup: the enrollment failed with nothing killed: {first.brief()}"]
    (world.state / "authorized.json").unlink()
    world.account.reset()
    shutil.copy2(sec_b, world.state / "sec-b")
    sec_b.unlink()
    return check.observe("after-kill-after-commit", agent_running=False).violations


def repair_case(root: Path, account: Account, ssh_pub: Path, deadline_flag: bool, template: Template,
                syscall: str, n: int, superseded=lambda: False) -> Outcome:
    """An enrollment committed and cut short before any of it was applied; the agent started under
    strace and killed at its Nth `syscall` from its start (inside the repair, for the writes and
    removals it does); started again normally; check that the repair rolled forward (the
    requester's key in authorized.json and authorized_keys, no sec-b); run the same requester
    command again; check."""
    world = World(root, account, ssh_pub, deadline_flag, template)
    check = Checker(world)
    outcome = Outcome("repair", syscall, n, killed=False, where="none")
    try:
        setup = cut_short_after_commit(world, check)
        if setup:
            outcome.violations += setup
            return outcome
        boot = Agent(world, inject=(syscall, n))
        ready = boot.wait_ready()
        boot.stop() if ready else boot.wait_dead(5)
        if boot.killed and not ready:
            outcome.killed, outcome.where = True, "start-up"
            outcome.steps.append(f"agent killed at {world.short(killed_call(boot.trace))}")
            outcome.violations += check.observe("after-kill", agent_running=False).violations
        else:
            outcome.steps.append("repair completed unkilled")
            if superseded():
                return outcome
            if not ready:
                outcome.violations.append(f"the agent did not start, and was not killed: "
                                          f"{boot.log.read_text()[-300:]}")
        restart_and_run_again(world, check, outcome, rolled_forward=True)
    finally:
        world.close()
    outcome.violations += check.secret_violations()
    return outcome
