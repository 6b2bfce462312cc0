"""Keys of an older layout renamed to the current one (see the scheme in store.keys).

`migrate_keys()` is idempotent and cheap when there is nothing left to do (one SCAN of the
`orch:task:*:history` names); the control worker and `orchestrator dev` run it at start.
"""

from __future__ import annotations

import logging

from orchestrator.store import scripts
from orchestrator.store.base import StoreBase
from orchestrator.store.keys import (
    LEGACY_HISTORY_SUFFIX,
    TASK_PREFIX,
    history_key,
    legacy_history_task,
)

log = logging.getLogger(__name__)


class KeyMigrationStore(StoreBase):
    def migrate_keys(self, scan_count: int = 1000) -> int:
        """Rename every history list of the older layout (`orch:task:<id>:history`, a list)
        to `orch:history:<id>`, each in one atomic step; a hash of such a name is the ledger
        entry of a task named `<id>:history` and is left alone. Returns how many moved."""
        move = self.r.register_script(scripts.MIGRATE_HISTORY)
        moved = 0
        with self._translate():
            pattern = TASK_PREFIX + "*" + LEGACY_HISTORY_SUFFIX
            for key in self.r.scan_iter(match=pattern, count=scan_count):
                task_id = legacy_history_task(str(key))
                if task_id is not None:
                    keys = scripts.MIGRATE_HISTORY_SIG.key_list(old=key, new=history_key(task_id))
                    moved += int(move(keys=keys))
        if moved:
            log.info("moved %d task history lists to the orch:history:<id> keys", moved)
        return moved
