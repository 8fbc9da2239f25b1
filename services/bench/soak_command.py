"""``logmesh soak``: its settings and entry. The run itself (``soak.py``, with the load generator
and the process supervisor) is imported only when the command runs, so other commands start without
it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from logmesh.cli.runner import run
from logmesh.common.logs import setup_logging
from logmesh.common.settings import ENV_PREFIX, LogmeshSettings, add_command, settings_from_args


class SoakSettings(LogmeshSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "SOAK_")

    duration: float = Field(120.0, gt=0, description="seconds of load and kills")
    rate: int = Field(2000, ge=100, description="events per second, split between the two publishers")
    kill_every: float = Field(4.0, gt=0, description="mean seconds between kills")
    seed: int = Field(1, description="random seed for the workload and the kills")
    data_dir: Path | None = Field(None, description="keep everything here instead of a temporary directory")


def soak_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(SoakSettings, args)
    setup_logging("warning", "text")

    async def main(stopping: asyncio.Event) -> int:
        from logmesh.bench.soak import soak

        print(f"soak: {settings.duration:g} s at {settings.rate:,} events/s, a kill every ~{settings.kill_every:g} s")
        r = await soak(settings)
        print(f"  events sent {r['sent']:,} ({r['distinct']:,} distinct), stored {r['stored']:,}")
        print(f"  kills: {', '.join(f'{k} {v}' for k, v in r['kills'].items())}")
        print(f"  lost {r['lost']}, stored twice {r['stored_twice']}, counted wrong {r['miscounted'] or 0}")
        print(f"  counters {r['counters']}, invariant {'holds' if r['invariant_holds'] else 'BROKEN'}")
        ok = not (r["lost"] or r["stored_twice"] or r["unexpected"] or r["miscounted"]) and r["invariant_holds"]
        return 0 if ok else 1

    return run(main)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = "minutes of load with random kills of every service; reports lost and double-counted events"
    add_command(commands, "soak", SoakSettings, soak_command, text)
