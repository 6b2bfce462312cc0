"""The stand-in agent a message is built for before the pick made in the placing step.

A new task is accepted, picked, routed and published in one Lua step (the store's
accept_and_place); its message must exist before the step, so it is built for a stand-in
whose id the step replaces with the pick's, in the list key and in the message. Pure: which
eligible agents allow that, and the stand-in.
"""

from __future__ import annotations

import re
import secrets

from orchestrator.models import CircuitBreakerState, RegisteredAgent

#: Agent ids the placing step may put in a message as they are (nothing JSON escapes).
PLAIN_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,200}\Z")
#: The stand-in's id: nothing a real agent, a payload or a queue name would contain.
STAND_IN_ID = f"orch-stand-in-{secrets.token_hex(12)}"


def stand_in_for(agents: list[RegisteredAgent]) -> RegisteredAgent | None:
    """RouteView.stand_in, for these eligible agents."""
    prefixes = set()
    for agent in agents:
        if agent.circuit is not CircuitBreakerState.CLOSED or not PLAIN_ID_RE.match(agent.agent_id):
            return None
        if not agent.queue.endswith(agent.agent_id):
            return None
        prefixes.add(agent.queue[: -len(agent.agent_id)])
    if len(prefixes) != 1:
        return None
    return RegisteredAgent(
        agent_id=STAND_IN_ID,
        capabilities={},
        queue=prefixes.pop() + STAND_IN_ID,
        handler_tasks=all(a.handler_tasks for a in agents),
    )
