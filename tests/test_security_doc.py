"""docs/security.md names the test that proves each line of its threat model: each exists."""

from __future__ import annotations

import re
from pathlib import Path

from logmesh.cli.main import build_parser, subcommands
from logmesh.common.nats_roles import ROLES, password_secret
from logmesh.common.secrets_store import ALL_SECRETS

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "security.md").read_text()


def test_every_test_the_threat_model_names_exists() -> None:
    named = 0
    for row in (line for line in DOC.splitlines() if line.startswith("|")):
        current: Path | None = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", row):
            path, _, test = ref.partition("::")
            if path:
                current = ROOT / path
                assert current.is_file(), ref
            if test:
                assert current is not None, f"{ref}: which file?"
                assert re.search(rf"^(async )?def {test}\(", current.read_text(), re.M), f"{current.name}::{test}"
            named += 1
    assert named >= 15


def test_every_secret_and_flag_the_doc_names_is_real() -> None:
    for secret in ALL_SECRETS:
        assert f"`{secret}`" in DOC or secret in DOC, secret
    for role in ROLES:
        assert password_secret(role) in DOC, role
    flags = {a for p in subcommands(build_parser()).values() for action in p._actions for a in action.option_strings}
    for flag in re.findall(r"`(--[a-z-]+)", DOC):
        assert flag in flags, flag
