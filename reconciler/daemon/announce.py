"""What the daemon tells its notification receivers, and when (issue 12).

The daemon calls `Announcer` where things happen: a revision applied or
rejected, a pass's results (a resource failed, drifted under `drift: warn`, or
had its drift healed), a fetch that failed long enough to make the source stale
or that succeeded again. Each becomes a `Notification` whose subject is what it
is about (a revision id, a resource id, the source's redacted URL), so a
condition that persists is one key and the notifier's gates deduplicate it.

Nothing here waits: `Notifier.notify` only queues. Without receivers every call
returns at once. Fields are built from what the API already shows (errors as
the engine wrote them, drift entries with sensitive values masked) and are cut
to a bounded length, so a hostile repository cannot make a payload large.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from reconciler.engine.records import Outcome, Report
from reconciler.fsm import State
from reconciler.notify import Condition, Notification, Severity

if TYPE_CHECKING:
    from reconciler.daemon.lifecycle import Daemon
    from reconciler.notifier import Notifier
    from reconciler.sources.base import Revision

STALE_AFTER = 3
"""Intervals without a successful fetch after which the source is stale (the
ReconcilerSourceStale alert's threshold)."""
_TITLE = 200
_VALUE = 300
_ERRORS = 3
"""Errors of a rejected revision put in its notification (the first ones)."""
_SLICE = 256
"""Results looked at between two checks of the pacer."""


def _cut(text: str, limit: int = _VALUE) -> str:
    text = " ".join(text.split()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Announcer:
    """Turns what the daemon sees into notifications for its `notifier` (None:
    no receivers configured, and every call is a no-op)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.notifier: Notifier | None = None
        self._stale = False
        """Whether the source was told stale: only then is a good fetch news."""

    def _tell(
        self,
        condition: Condition,
        severity: Severity,
        subject: str,
        title: str,
        fields: dict[str, str],
    ) -> None:
        assert self.notifier is not None
        self.notifier.notify(
            Notification(
                condition,
                severity,
                subject,
                _cut(title, _TITLE),
                {k: _cut(v) for k, v in fields.items()},
            )
        )

    def applied(self, revision: Revision, report: Report, *, recovered: bool) -> None:
        if self.notifier is None:
            return
        what = "last good revision enforced after a start" if recovered else "applied"
        self._tell(
            Condition.APPLIED,
            Severity.WARNING if not report.ok else Severity.INFO,
            revision.id,
            f"revision {revision.id[:12]} {what}: {report.summary()}",
            {
                "revision": revision.id,
                "summary": revision.summary,
                **{action: str(n) for action, n in report.by_action().items()},
            },
        )

    def rejected(self, revision: Revision, errors: list[str], cause: str) -> None:
        if self.notifier is None:
            return
        fields = {"revision": revision.id, "cause": cause, "errors": str(len(errors))}
        for i, error in enumerate(errors[:_ERRORS], 1):
            fields[f"error {i}"] = error
        self._tell(
            Condition.REJECTED,
            Severity.ERROR,
            revision.id,
            f"revision {revision.id[:12]} rejected, nothing of it applied: {len(errors)} error(s)",
            fields,
        )

    async def results(self, report: Report) -> None:
        """A pass's failures, drifts left alone, heals; a resource back in sync
        ends its failure, so a later one is told again."""
        notifier = self.notifier
        if notifier is None:
            return
        pacer = self._daemon.pacer
        drift = self._daemon.scheduler.drift
        for i, (rid, result) in enumerate(report.results.items()):
            if i % _SLICE == _SLICE - 1:
                await pacer.pause()
            where = {"revision": report.revision}
            if result.instance:
                where["instance"] = result.instance
            if result.state is State.FAILED or result.action == Outcome.FAILED:
                self._tell(
                    Condition.FAILED,
                    Severity.ERROR,
                    rid,
                    f"{rid} failed: {result.error or 'no error given'}",
                    {**where, "error": result.error or ""},
                )
            elif result.action == Outcome.DRIFTED:
                entries = drift.get(rid) or []
                fields = {**where, "fields": ", ".join(e["field"] for e in entries)}
                for entry in entries[:8]:
                    name = entry["field"]
                    if entry.get("sensitive"):
                        fields[name] = "(sensitive: not shown)"
                    else:
                        observed, desired = entry.get("observed"), entry.get("desired")
                        fields[name] = f"observed {observed!r}, desired {desired!r}"
                self._tell(
                    Condition.DRIFTED,
                    Severity.WARNING,
                    rid,
                    f"{rid} drifted ({fields['fields'] or 'state'}); policy: not healed now",
                    fields,
                )
            elif result.action == Outcome.HEALED:
                changed = ", ".join(c.field for c in result.plan.changes) if result.plan else ""
                self._tell(
                    Condition.HEALED,
                    Severity.INFO,
                    rid,
                    f"{rid}: drift healed ({changed or 'state'})",
                    {**where, "fields": changed},
                )
            elif result.state is State.IN_SYNC:  # a later failure or drift is news again
                notifier.clear(Condition.FAILED, rid)
                notifier.clear(Condition.DRIFTED, rid)

    def fetched(self, ok: bool, error: str | None = None) -> None:
        """After each fetch: a failure makes the source stale once no fetch has
        succeeded for STALE_AFTER intervals (counted from the start when none
        has); a success ends the staleness."""
        if self.notifier is None:
            return
        daemon = self._daemon
        state = daemon.source_state
        if ok:
            if not self._stale:
                return
            self._stale = False
            self._tell(
                Condition.RECOVERED,
                Severity.INFO,
                state.url,
                f"source {state.url} fetched again",
                {"source": state.url},
            )
            return
        since = state.last_success or daemon.started
        if time.time() - since < STALE_AFTER * daemon.settings.interval:
            return
        last = "never" if state.last_success is None else _iso(state.last_success)
        self._stale = True
        self._tell(
            Condition.STALE,
            Severity.WARNING,
            state.url,
            f"source {state.url} is stale: no successful fetch since {last}",
            {"source": state.url, "lastSuccess": last, "error": error or ""},
        )


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
