"""The per-client half of the state store: rate limits and blocks.

ORCH_CLIENT_RATE_LIMIT and ORCH_SECURITY_AUTO_BLOCK. Rejections themselves are counted with the
ledger (LedgerStore.record_rejection, in ledger.py), where every refused submission is."""

from __future__ import annotations

from orchestrator.store.base import StoreBase
from orchestrator.store.codes import AdmitVerdict
from orchestrator.store.keys import BLOCKS, block_key, rate_key
from orchestrator.store.scripts import ADMIT_CLIENT_SIG


class ClientStore(StoreBase):
    def admit_client(
        self, client_id: str, *, now: float, rate: float, burst: int, check_block: bool
    ) -> tuple[AdmitVerdict, float]:
        """One round trip (scripts.ADMIT_CLIENT): (OK, 0), (BLOCKED, until) or
        (LIMITED, seconds until the client's bucket has a token again)."""
        with self._translate():
            verdict, value = self._admit(
                keys=ADMIT_CLIENT_SIG.key_list(
                    block=block_key(client_id), bucket=rate_key(client_id)
                ),
                args=ADMIT_CLIENT_SIG.arg_list(
                    now=repr(now),
                    rate=repr(float(rate)),
                    burst=burst,
                    check_block="1" if check_block else "0",
                ),
            )
        return AdmitVerdict(str(verdict)), float(value) if value else 0.0

    def block_client(self, client_id: str, until: float, now: float) -> None:
        """Refuse the client's submissions until `until` (a key with that TTL, and its entry
        in the index the security loop lists)."""
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(block_key(client_id), repr(until), px=max(1, int((until - now) * 1000)))
            pipe.zadd(BLOCKS, {client_id: until})
            pipe.zremrangebyscore(BLOCKS, "-inf", now)
            pipe.execute()

    def unblock_client(self, client_id: str) -> bool:
        """Lift a block; False when there was none."""
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(block_key(client_id))
            pipe.zrem(BLOCKS, client_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def blocked_clients(self, now: float) -> dict[str, float]:
        """Clients blocked now, with when each block ends."""
        with self._translate():
            pipe = self.r.pipeline(transaction=True)
            pipe.zremrangebyscore(BLOCKS, "-inf", now)
            pipe.zrange(BLOCKS, 0, -1, withscores=True)
            _, entries = pipe.execute()
        return {str(c): float(until) for c, until in entries}
