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

import math
import os
import signal
import time

POISON_MARKER = b"LOGMESH-POISON"

# A misspelt point would make a fault test inject nothing and still pass, so only these are accepted.
POINTS = frozenset(
    {
        "sink.before_commit",
        "sink.mid_transaction",
        "sink.after_commit",
        "sink.slow_commit",
        "sink.poison",
        "ingest.after_publish",
    }
)


class Failpoints:
    def __init__(self, spec: str) -> None:
        self._actions: dict[str, tuple[str, float]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            name = name.strip()
            if name not in POINTS:
                raise ValueError(f"failpoint {name!r}: unknown point (one of {', '.join(sorted(POINTS))})")
            if name in self._actions:
                raise ValueError(f"failpoint {name!r}: given twice")
            self._actions[name] = _parse_action(name, action.strip())

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


def _parse_action(name: str, action: str) -> tuple[str, float]:
    kind, _, arg = action.partition(":")
    if kind in ("kill", "exit") and not arg:
        return kind, 0.0
    if kind == "sleep" and arg:
        try:
            seconds = float(arg)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return kind, seconds
        raise ValueError(f"failpoint {name!r}: sleep needs a number of seconds >= 0, not {arg!r}")
    raise ValueError(f"failpoint {name!r}: unknown action {action!r} (kill, exit or sleep:<seconds>)")
