"""Notifications (issue 12, part one): stable keys, deduplication with repeat and
resolution, the rate limit's summary, the bounded outbox, and the webhook signature
checked as a receiver would, against an HMAC computed here."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from reconciler.notify import Condition, Gate, Notification, Outbox, Severity, sign, verify


def _n(condition: Condition, subject: str = "File/app", **fields: str) -> Notification:
    return Notification(condition, Severity.ERROR, subject, f"{condition} {subject}", fields)


def test_the_key_holds_no_duration_count_or_time() -> None:
    a = _n(Condition.FAILED, error="timeout after 3.2 s", attempts="4")
    b = _n(Condition.FAILED, error="timeout after 9.9 s", attempts="7")
    assert a.key == b.key == "resource-failed:File/app"
    assert a.key != _n(Condition.FAILED, "File/other").key


def test_a_persisting_condition_notifies_once_then_after_the_repeat_interval() -> None:
    gate = Gate(repeat=3600, burst=100, per=60)
    assert gate.admit(_n(Condition.FAILED), 0.0) == [_n(Condition.FAILED)]
    assert gate.admit(_n(Condition.FAILED), 10.0) == []
    assert gate.admit(_n(Condition.FAILED), 3599.0) == []
    assert len(gate.admit(_n(Condition.FAILED), 3600.0)) == 1
    assert gate.deduplicated == 2


def test_a_resolution_is_told_only_for_a_condition_that_was() -> None:
    gate = Gate(repeat=3600, burst=100, per=60)
    assert gate.admit(_n(Condition.HEALED), 0.0) == []  # nothing drifted as far as told
    assert len(gate.admit(_n(Condition.DRIFTED), 1.0)) == 1
    assert len(gate.admit(_n(Condition.HEALED), 2.0)) == 1
    assert len(gate.admit(_n(Condition.DRIFTED), 3.0)) == 1  # a new drift is news again


def test_the_rate_limit_holds_back_and_the_next_one_out_summarises() -> None:
    gate = Gate(repeat=3600, burst=2, per=60)
    sent = [gate.admit(_n(Condition.FAILED, f"File/{i}"), float(i)) for i in range(5)]
    assert [len(s) for s in sent] == [1, 1, 0, 0, 0]
    assert gate.suppressed == 3
    later = gate.admit(_n(Condition.FAILED, "File/late"), 61.0)
    assert [n.condition for n in later] == [Condition.FAILED, Condition.SUPPRESSED]
    assert later[1].fields == {"suppressed": "3"} and gate.suppressed == 0


def test_a_full_outbox_drops_the_oldest_and_counts_it() -> None:
    box = Outbox(2)
    for i in range(5):
        box.put(_n(Condition.FAILED, f"File/{i}"))
    assert box.dropped == 3
    assert [n.subject for n in box.take()] == ["File/3", "File/4"]
    assert len(box) == 0
    with pytest.raises(ValueError):
        Outbox(0)


def test_the_signature_is_what_a_receiver_computes_and_checks() -> None:
    secret, body = b"s3cret", b'{"condition":"resource-failed"}'
    header = sign(secret, body, 1_700_000_000)
    expected = hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(secret, body, header, now=1_700_000_100)
    assert not verify(secret, body + b" ", header, now=1_700_000_100)  # body changed
    assert not verify(b"other", body, header, now=1_700_000_100)  # another secret
    assert not verify(secret, body, header, now=1_700_000_400)  # too old: a replay
    assert not verify(secret, body, "v1=" + expected, now=1_700_000_000)  # no time
    assert not verify(secret, body, "t=x,v1=" + expected, now=1_700_000_000)


def test_bad_limits_are_refused() -> None:
    for kwargs in ({"repeat": 0, "burst": 1, "per": 1}, {"repeat": 1, "burst": 0, "per": 1}):
        with pytest.raises(ValueError):
            Gate(**kwargs)  # type: ignore[arg-type]
