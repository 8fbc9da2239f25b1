"""Named points where a test makes a real process fail at an exact moment, which no outside signal
can time.

``LOGMESH_FAILPOINTS="sink.after_commit=kill"`` makes the sink SIGKILL itself right after its first
commit and before it acks. Actions: ``kill`` (SIGKILL), ``exit`` (exit code 3 without cleanup),
``sleep:<seconds>``. Unset, a failpoint costs one dict lookup.

Points: ``sink.before_commit``, ``sink.mid_transaction`` (events written, not committed),
``sink.after_commit`` (committed, not acked), ``sink.slow_commit``, ``sink.poison`` (hit only for a
batch holding a message whose body contains ``LOGMESH-POISON``), ``ingest.after_publish`` (events
stored in JetStream, response not sent).
"""

from __future__ import annotations

import os
import signal
import time

POISON_MARKER = b"LOGMESH-POISON"


class Failpoints:
    def __init__(self, spec: str) -> None:
        self._actions: dict[str, tuple[str, float]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            kind, _, arg = action.partition(":")
            if kind not in ("kill", "exit", "sleep") or (kind == "sleep") != bool(arg):
                raise ValueError(f"failpoint {name!r}: unknown action {action!r} (kill, exit or sleep:<seconds>)")
            self._actions[name] = (kind, float(arg or 0))

    def active(self, name: str) -> bool:
        return name in self._actions

    def hit(self, name: str) -> None:
        action = self._actions.get(name)
        if action is None:
            return
        kind, seconds = action
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "exit":
            os._exit(3)
        else:
            time.sleep(seconds)
