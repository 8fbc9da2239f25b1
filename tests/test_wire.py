"""The ack subject and header block readers (common/wire.py), in both forms a server writes."""

from __future__ import annotations

import pytest

from logmesh.common.reference_decoder import Rejected, decode_message
from logmesh.common.wire import Delivery, delivery_count, parse_headers

# $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
PLAIN = b"$JS.ACK.LOGS.sink.3.1234.17.1700000000123456789.42"
# with a domain and an account hash after ACK
DOMAIN = b"$JS.ACK.hub.ACCHASH.LOGS.sink.3.1234.17.1700000000123456789.42.token"


@pytest.mark.parametrize("reply", [PLAIN, DOMAIN])
def test_an_ack_subject_tells_the_sequence_the_deliveries_and_the_time(reply: bytes) -> None:
    assert Delivery.from_reply(reply) == Delivery(stream_seq=1234, delivered=3, stream_time_ns=1700000000123456789)
    assert delivery_count(reply) == 3


def test_a_header_block_reads_as_nats_py_reads_it() -> None:
    block = b"NATS/1.0\r\nNats-Msg-Id:  orders:e1 \r\nLogmesh-Source: edge \xc3\xa9\r\nbroken line\r\n\r\n"
    assert parse_headers(block) == {"Nats-Msg-Id": "orders:e1", "Logmesh-Source": "edge é"}
    assert parse_headers(None) is None and parse_headers(b"") is None


def test_a_repeated_message_id_is_read_as_jetstream_reads_it() -> None:
    """JetStream dedups by the first Nats-Msg-Id line: a second one naming the subject's topic must
    not hide a first naming another topic from the sink's rule."""
    block = b"NATS/1.0\r\nNats-Msg-Id: pay:invoice-99\r\nNats-Msg-Id: junk:j1\r\nX-Other: a\r\nX-Other: b\r\n\r\n"
    assert parse_headers(block) == {"Nats-Msg-Id": "pay:invoice-99", "X-Other": "b"}
    with pytest.raises(Rejected, match="names topic 'pay', not the subject's topic 'junk'"):
        decode_message("logs.junk", parse_headers(block), b'{"event_id":"j1"}', Delivery(1, 1, 0), 0)
