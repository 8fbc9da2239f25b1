"""The README's "Using the nats CLI" examples, read from the README itself and sent as the nats CLI
sends them (same subjects, bytes and headers), against a real logmesh up."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client

from tests.harness import Up

pytestmark = pytest.mark.timeout(90)

README = Path(__file__).resolve().parent.parent / "README.md"


def block() -> list[list[str]]:
    """The block's commands and ``export`` lines, split as the shell splits them."""
    text = README.read_text()
    section = text[text.index("## Using the nats CLI") :]
    section = section[section.index("```sh") + 5 : section.index("```", section.index("```sh") + 5)]
    lines = [shlex.split(line, comments=True) for line in section.splitlines()]
    return [line for line in lines if line]


def examples() -> list[list[str]]:
    """The nats commands, without the global ``--inbox-prefix X`` (see :func:`inbox_prefix`)."""
    out = []
    for line in block():
        if line[0] == "nats":
            out.append([a for i, a in enumerate(line) if a != "--inbox-prefix" and line[i - 1] != "--inbox-prefix"])
    return out


def inbox_prefix(line: list[str]) -> str:
    return line[line.index("--inbox-prefix") + 1] if "--inbox-prefix" in line else "_INBOX"


SECRET_FILE = re.compile(r"\$\(cat data/secrets/([a-z-]+)\)")


def users(data_dir: Path) -> list[tuple[str, str, str]]:
    """(user, password, inbox prefix) for each nats command, as the ``export`` lines before it set
    them (``$(cat data/secrets/NAME)`` read from the data directory of the ``up`` under test)."""
    env: dict[str, str] = {}
    out = []
    for line in block():
        if line[0] == "export":
            for assignment in line[1:]:
                name, _, value = assignment.partition("=")
                env[name] = SECRET_FILE.sub(lambda m: (data_dir / "secrets" / m[1]).read_text().strip(), value)
        elif line[0] == "nats":
            out.append((env["NATS_USER"], env["NATS_PASSWORD"], inbox_prefix(line)))
    return out


def parse_pub(args: list[str]) -> tuple[bool, str, bytes, dict[str, str]]:
    acked = "-J" in args
    rest = [a for a in args if a != "-J"]
    headers: dict[str, str] = {}
    while "-H" in rest:
        i = rest.index("-H")
        name, _, value = rest[i + 1].partition(":")
        headers[name] = value
        del rest[i : i + 2]
    subject, body = rest
    return acked, subject, body.encode(), headers


def test_the_readme_lists_every_kind_of_example() -> None:
    kinds = {tuple(c[1:3]) if c[1] in ("stream", "consumer", "micro") else (c[1],) for c in examples()}
    assert {("pub",), ("stream", "info"), ("consumer", "info"), ("micro", "ls"), ("req",)} <= kinds


def test_every_nats_cli_example_works(up: Up) -> None:
    outcomes = asyncio.run(run_examples(up))
    published = [o for o in outcomes if o[0] == "pub"]
    assert len(published) == 3
    acked = [o for o in published if o[1] is not None]
    assert acked and acked[0][1] == {"stream": "LOGS", "duplicate": False}
    stats = up.settled_stats(arrived=3)
    assert stats["unique_processed"] == 3
    line = up.http.get("/events/web/req-1").json()
    assert line["payload"] == {"message": "GET /index.html 200"} and line["source"] == "nginx"
    answers = {o[0]: o[1] for o in outcomes}
    assert answers["stream info"] == "LOGS" and answers["consumer info"] == "sink"
    assert "logmesh-sink" in answers["micro ls"]
    assert answers["req logmesh.query.event"]["payload"] == {"amount": 12}
    # The same core publish again: JetStream drops it inside the window, and nothing counts it.
    asyncio.run(run_examples(up, only_first=True))
    assert up.settled_stats(arrived=3)["unique_processed"] == 3


async def run_examples(up: Up, only_first: bool = False) -> list[tuple[str, Any]]:
    """Each example as the user the README's ``export`` lines name, with its inbox prefix."""
    url = f"nats://127.0.0.1:{up.nats_port}"
    connections: dict[tuple[str, str, str], Client] = {}
    out: list[tuple[str, Any]] = []
    try:
        pairs = list(zip(examples(), users(up.data_dir), strict=True))
        for args, who in pairs[:1] if only_first else pairs:
            if who not in connections:
                user, password, prefix = who
                connections[who] = await nats.connect(url, user=user, password=password, inbox_prefix=prefix)
            nc = connections[who]
            js = nc.jetstream()
            verb = args[1]
            if verb == "pub":
                acked, subject, body, headers = parse_pub(args[2:])
                if acked:
                    ack = await js.publish(subject, body, headers=headers)
                    out.append(("pub", {"stream": ack.stream, "duplicate": bool(ack.duplicate)}))
                else:
                    await nc.publish(subject, body, headers=headers)  # no reply subject: a core publish
                    out.append(("pub", None))
            elif verb == "stream":
                out.append(("stream info", (await js.stream_info(args[3])).config.name))
            elif verb == "consumer":
                out.append(("consumer info", (await js.consumer_info(args[3], args[4])).name))
            elif verb == "micro":
                # nats micro ls: a PING to every service
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish("$SRV.PING", b"", reply=inbox)
                names = []
                try:
                    while True:
                        names.append(orjson.loads((await sub.next_msg(timeout=0.5)).data)["name"])
                except nats.errors.TimeoutError:
                    pass
                out.append(("micro ls", names))
            elif verb == "req":
                reply = await _request_until_found(nc, args[2], args[3].encode())
                out.append((f"req {args[2]}", orjson.loads(reply)))
            await nc.flush()
    finally:
        for nc in connections.values():
            await nc.close()
    return out


async def _request_until_found(nc: Client, subject: str, body: bytes) -> bytes:
    """Asks until the sink has the event (it commits within a moment of the publish)."""
    for _ in range(200):
        reply = await nc.request(subject, body, timeout=5)
        if not (reply.headers or {}).get("Nats-Service-Error-Code"):
            return reply.data
        await asyncio.sleep(0.05)
    raise AssertionError(f"{subject} kept failing: {reply.headers}")
