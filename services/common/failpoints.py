"""Named points where a test can make a real process fail at an exact moment.

``LOGMESH_FAILPOINTS="sink.after_commit=kill"`` makes the sink SIGKILL itself right after its first
commit and before it acks, which no outside signal can time. Unset, a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


class Failpoints:
    def __init__(self, spec: str) -> None:
        self._actions: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            if action not in ("kill", "exit"):
                raise ValueError(f"failpoint {name!r}: unknown action {action!r} (kill or exit)")
            self._actions[name] = action

    def hit(self, name: str) -> None:
        action = self._actions.get(name)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "exit":
            os._exit(3)
