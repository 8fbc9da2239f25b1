"""NATS URLs in log lines: a password or token given in the URL never shows."""

from __future__ import annotations

import pytest

from logmesh.common.jetstream import shown_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://user:pw@host:4222", "nats://user:***@host:4222"),
        ("nats://token@host:4222", "nats://***@host:4222"),
        ("tls://user:p@ss:w@host", "tls://user:***@host"),
        ("nats://a:b@n1:4222, nats://n2:4222", "nats://a:***@n1:4222,nats://n2:4222"),
    ],
)
def test_credentials_in_a_nats_url_are_not_shown(url: str, shown: str) -> None:
    assert shown_url(url) == shown
