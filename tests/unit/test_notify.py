"""Notifications (issue 12, part one): stable keys, deduplication with repeat and
resolution, the rate limit's summary, the bounded outbox, and the webhook signature
checked as a receiver would, against an HMAC computed here."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from reconciler.notify import (
    Condition,
    Gate,
    Notification,
    Outbox,
    Receiver,
    Severity,
    key_of,
    sign,
    verify,
)


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


def test_a_recovery_is_told_only_for_a_staleness_that_was() -> None:
    gate = Gate(repeat=3600, burst=100, per=60)
    source = "https://git.example/config.git"
    assert gate.admit(_n(Condition.RECOVERED, source), 0.0) == []  # nothing was stale
    assert len(gate.admit(_n(Condition.STALE, source), 1.0)) == 1
    assert len(gate.admit(_n(Condition.RECOVERED, source), 2.0)) == 1
    assert gate.admit(_n(Condition.RECOVERED, source), 3.0) == []
    assert len(gate.admit(_n(Condition.STALE, source), 4.0)) == 1  # stale again: news


def test_a_heal_ends_a_told_drift_and_is_news_on_its_own() -> None:
    gate = Gate(repeat=100, burst=100, per=60)
    assert len(gate.admit(_n(Condition.DRIFTED), 1.0)) == 1
    assert gate.admit(_n(Condition.DRIFTED), 2.0) == []
    assert len(gate.admit(_n(Condition.HEALED), 3.0)) == 1  # ends the drift
    assert len(gate.admit(_n(Condition.DRIFTED), 4.0)) == 1  # a new drift is news again
    assert len(gate.admit(_n(Condition.HEALED), 5.0)) == 1
    # found and healed at once (heal policy, the drift never told): told, once per repeat
    assert len(gate.admit(_n(Condition.HEALED), 6.0)) == 1
    assert gate.admit(_n(Condition.HEALED), 50.0) == []
    assert len(gate.admit(_n(Condition.HEALED), 106.0)) == 1
    assert len(gate.admit(_n(Condition.HEALED, "File/other"), 107.0)) == 1


def test_clear_forgets_a_condition_silently() -> None:
    gate = Gate(repeat=3600, burst=100, per=60)
    assert len(gate.admit(_n(Condition.FAILED), 0.0)) == 1
    assert gate.admit(_n(Condition.FAILED), 1.0) == []
    gate.clear(_n(Condition.FAILED).key)
    gate.clear("resource-failed:File/never-held")
    assert len(gate.admit(_n(Condition.FAILED), 2.0)) == 1  # failed again: news


def test_heals_held_for_deduplication_do_not_pile_up() -> None:
    gate = Gate(repeat=10, burst=10**6, per=1)
    for i in range(2000):
        gate.admit(_n(Condition.HEALED, f"File/{i}"), float(i))
    assert len(gate._held) < 600


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


def test_an_outbox_pops_the_oldest_first() -> None:
    box = Outbox(3)
    assert box.pop() is None
    for i in range(4):
        box.put(_n(Condition.FAILED, f"File/{i}"))
    assert [box.pop().subject for _ in range(3)] == ["File/1", "File/2", "File/3"]  # type: ignore[union-attr]
    assert box.pop() is None and box.dropped == 1


def _receiver(**kwargs: object) -> Receiver:
    values: dict[str, object] = {
        "name": "ops",
        "type": "webhook",
        "url": "https://hooks.example/T0KEN-in-the-path",
        "secret": b"hmac-s3cret",
    }
    values.update(kwargs)
    return Receiver(**values)  # type: ignore[arg-type]


def test_a_receiver_filters_by_event_severity_kind_and_name() -> None:
    everything = _receiver()
    assert everything.wants(_n(Condition.FAILED)) and everything.wants(_n(Condition.APPLIED))
    events = _receiver(events=frozenset({Condition.FAILED, Condition.REJECTED}))
    assert events.wants(_n(Condition.FAILED)) and not events.wants(_n(Condition.DRIFTED))
    info = Notification(Condition.APPLIED, Severity.INFO, "3f2a9c1", "applied")
    assert not _receiver(min_severity=Severity.WARNING).wants(info)
    assert _receiver(min_severity=Severity.WARNING).wants(_n(Condition.FAILED))  # ERROR
    globs = _receiver(kinds=("File", "Postgres*"), names=("app-*",))
    assert globs.wants(_n(Condition.FAILED, "File/app-config"))
    assert globs.wants(_n(Condition.DRIFTED, "PostgresRole/app-reader"))
    assert not globs.wants(_n(Condition.FAILED, "File/motd"))
    assert not globs.wants(_n(Condition.HEALED, "Directory/app-dir"))
    assert not globs.wants(_n(Condition.FAILED, "file/app-config"))  # globs are case-sensitive
    # kinds and names do not filter what is not about a resource
    assert globs.wants(_n(Condition.REJECTED, "3f2a9c1"))
    assert globs.wants(_n(Condition.STALE, "https://git.example/config.git"))


def test_a_receiver_never_shows_its_url_or_secret() -> None:
    receiver = _receiver()
    assert "T0KEN" not in repr(receiver) and "s3cret" not in repr(receiver)
    assert "ops" in repr(receiver)
    with pytest.raises(ValueError, match="needs a secret") as caught:
        _receiver(secret=None)
    assert "T0KEN" not in str(caught.value)
    for bad in ({"burst": 0}, {"per": 0}, {"repeat": -1}, {"timeout": 0}, {"name": ""}):
        with pytest.raises(ValueError) as caught:
            _receiver(**bad)
        assert "T0KEN" not in str(caught.value)
    assert _receiver(type="apprise", secret=None).secret is None


def test_key_of_is_the_notification_key() -> None:
    assert key_of(Condition.FAILED, "File/app") == _n(Condition.FAILED).key
