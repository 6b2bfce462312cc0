"""A new task accepted, routed and published in one atomic step.

The broker being the state store's Redis, the step sends it to an agent the router chose
(`accept_and_route`), or to the next pick of the shared smooth weighted round-robin made in
the same step (`accept_and_place`), its message built beforehand for a stand-in agent whose
id the step puts in. Either way a task no agent has a free slot for waits in the backlog
instead, in the same step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from orchestrator.models import RegisteredAgent
from orchestrator.store.agents import WrrPeers
from orchestrator.store.calls import Acceptance
from orchestrator.store.codes import AcceptStatus
from orchestrator.store.keys import wrr_key
from orchestrator.store.ledger import LedgerStore
from orchestrator.store.scripts import ACCEPT_AND_ROUTE_SIG


class PlacingStore(LedgerStore):
    """accept_and_route and accept_and_place (see the module's docstring)."""

    def accept_and_route(
        self,
        acceptance: Acceptance,
        *,
        agent_id: str,
        pushes: Sequence[tuple[str, str]],
        slots: int | None = None,
    ) -> tuple[AcceptStatus, str]:
        """Accept a new task, route it to `agent_id` (dispatch 1) and publish its message by
        pushing `pushes` ((list key, payload): the broker's own message, built for dispatch 1)
        in one atomic step: all of it happens, or, for a task that is not new, none of it.
        With `slots` (the agent's concurrency + prefetch), an agent that has none free since
        it was picked gets nothing: the task waits in the backlog. Returns ("routed", agent),
        ("queued", agent), or accept's ("resume" | "duplicate", state). The acceptance's outbox
        is not used: the task is published in the same step."""
        keys, parts = self._place_step(acceptance, agent_id, pushes, slots)
        args = ACCEPT_AND_ROUTE_SIG.arg_list(**parts, picking=[])
        with self._translate():
            status, state = self._run_place_step(keys, args)
        return AcceptStatus(str(status)), str(state)

    def accept_and_place(
        self,
        acceptance: Acceptance,
        *,
        peers: WrrPeers,
        stand_in: RegisteredAgent,
        pushes: Sequence[tuple[str, str]],
    ) -> tuple[AcceptStatus, str]:
        """accept_and_route to the agent the shared smooth weighted round-robin over `peers`
        (prepared with their slots) picks in the same step: `pushes` were built for the agent
        `stand_in`, whose id (in the list keys and payloads) the step replaces with the pick's
        (ids the caller checked need no escaping in JSON). With every peer full the task waits
        in the backlog, and the sequence does not advance: ("queued", ""); the message stays
        with the task, and the fill that first dispatches it pushes it for its agent (one
        whose queue is named as the stand-in's, with handler tasks when the message is named
        by type) instead of leaving it to its caller to build. ("queued", agent) when the pick
        no longer takes work (asleep, quarantined since the view was read)."""
        assert peers.slots is not None, "the peers are prepared with their slots"
        task_id = acceptance.task.task_id
        by_type = "1" if stand_in.handler_tasks else "0"
        keys, parts = self._place_step(acceptance, stand_in.agent_id, pushes, None)
        for full in (False, True):  # the peers themselves only when the step asks for them
            picking = [stand_in.agent_id, stand_in.queue, by_type, *peers.args(task_id, full=full)]
            args = ACCEPT_AND_ROUTE_SIG.arg_list(**parts, picking=picking)
            with self._translate():
                status, state = self._run_place_step(keys, args)
            if status != "peers":
                break
        return AcceptStatus(str(status)), str(state)

    def _run_place_step(self, keys: list[Any], args: list[Any]) -> tuple[Any, Any]:
        """scripts.ACCEPT_AND_ROUTE, replicated (the caller translates its errors: they name
        the caller's step)."""
        status, state = self.replicated(
            lambda client: self._accept_route(keys=keys, args=args, client=client)
        )
        return status, state

    def _place_step(
        self,
        acceptance: Acceptance,
        agent_id: str,
        pushes: Sequence[tuple[str, str]],
        slots: int | None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """KEYS of scripts.ACCEPT_AND_ROUTE, and its ARGV sections but `picking`."""
        task, now = acceptance.task, acceptance.now
        accept_keys, accept_args = self._accept_step(replace(acceptance, outbox=None))
        route_keys, route_args = self._route_step(
            task, agent_id=agent_id, now=now, drop_outbox=False, slots=slots
        )
        keys = ACCEPT_AND_ROUTE_SIG.key_list(
            accept=accept_keys,
            route=route_keys,
            wrr_state=wrr_key(task.capability_key),
            pushes=[key for key, _ in pushes],
        )
        parts = {
            "accepting": accept_args,
            "routing": route_args,
            "payloads": [payload for _, payload in pushes],
            "waiting": self._waiting_args(task, now),
        }
        return keys, parts
