"""Read-only planning queries: what a pass would do (`preview`), whether it would
refuse a mass prune, what a revision changes, and which removed resources are
handed over to a new id rather than pruned. Nothing here writes to the store or
changes a target; the pass driver uses the same helpers, so preview and apply
judge a resource alike."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pydantic import BaseModel

from reconciler import fsm, shards
from reconciler.engine.batcher import observer
from reconciler.engine.records import PlanAction, Planned, error_text
from reconciler.model import PREPARED, Action, DesiredState, Policy, Resource, ResourceId
from reconciler.registry import Registry
from reconciler.store.base import Record

UNCHECKED_NOTE = "(drift not checked: policy drift: ignore)"


def dump(model: BaseModel) -> str:
    return model.model_dump_json(by_alias=True)


class PolicyDumps:
    """Policy JSON as stored, dumped once per policy object: resources share them
    (every resource without a `policy:` block shares DEFAULT_POLICY)."""

    def __init__(self) -> None:
        self._dumps: dict[int, tuple[Policy, str]] = {}

    def __call__(self, policy: Policy) -> str:
        known = self._dumps.get(id(policy))
        if known is None:  # the policy is kept alive with its dump, so its id stays its own
            known = self._dumps[id(policy)] = (policy, dump(policy))
        return known[1]


def stored_policy(record: Record) -> Policy:
    return Policy.model_validate_json(record.policy) if record.policy else Policy()


def stored_spec(registry: Registry, record: Record) -> BaseModel | None:
    provider = registry.get(record.kind)
    if provider is None or record.spec is None:
        return None
    try:
        return provider.Spec.model_validate_json(record.spec, context=PREPARED)
    except ValueError:
        return None


def unchecked(res: Resource, record: Record | None) -> bool:
    """Whether a pass leaves `res` alone: under `policy.drift: ignore` a resource
    whose spec converged is never observed again (no drift check, no drift); only
    a new spec (or a failure, a dependency, a resume) brings it back into a pass."""
    return (
        res.policy.drift == "ignore"
        and not res.policy.suspend
        and record is not None
        and record.state in fsm.CHECKED
        and record.spec_hash == res.spec_hash
    )


def gone(record: Record, desired: DesiredState) -> str:
    """Why a recorded resource of a bundle instance left the desired state: the
    instance itself was removed, or it no longer makes this resource ("" for a
    resource written flat: nothing to add to "removed from desired state")."""
    if not record.instance:
        return ""
    if record.instance not in desired.instances:
        return f"instance {record.instance} removed"
    return f"no longer made by instance {record.instance}"


def removals(
    registry: Registry, desired: DesiredState, inventory: Mapping[str, Record]
) -> tuple[list[ResourceId], dict[ResourceId, ResourceId]]:
    """The recorded resources the desired state no longer has, and which of
    them are handed over (see `handovers`) rather than pruned."""
    removed = [rid for rid in inventory if rid not in desired.resources]
    return removed, handovers(registry, desired, inventory, removed)


def handovers(
    registry: Registry,
    desired: DesiredState,
    inventory: Mapping[str, Record],
    removed: list[ResourceId],
) -> dict[ResourceId, ResourceId]:
    """Removed resources whose object (same path) a resource of the new desired
    state now owns, such as a rename: the old id is released, never deleted,
    and the new id inherits whether reconciler created the object."""
    if not removed:
        return {}
    owners: dict[str, ResourceId] = {}
    for rid, res in desired.resources.items():
        path = registry[res.kind].path(res.spec)
        if path is not None:
            owners[path] = rid
    found = {}
    for rid in removed:
        spec = stored_spec(registry, inventory[rid])
        provider = registry.get(inventory[rid].kind)
        path = provider.path(spec) if provider is not None and spec is not None else None
        if path is not None and path in owners:
            found[rid] = owners[path]
        elif rid in desired.elsewhere:
            # still in the revision, but another shard's (or no shard's): released,
            # never deleted, as another daemon may manage the object now (0152)
            found[rid] = shards.describe(desired.elsewhere[rid])
    return found


def prune_refusal(
    removed: list[ResourceId], inventory: Mapping[str, Record], *, max_share: float
) -> str | None:
    """Why pruning `removed` is refused (all, or over `max_share` of the inventory)."""
    if not removed:
        return None
    share = len(removed) / len(inventory)
    if len(removed) == len(inventory):
        return (
            f"this revision would prune all {len(inventory)} managed resources; "
            "refusing (pass --allow-mass-prune if that is intended)"
        )
    if share > max_share:
        return (
            f"this revision would prune {len(removed)} of {len(inventory)} managed "
            f"resources ({share:.0%}, over the limit of {max_share:.0%}); "
            "refusing (pass --allow-mass-prune if that is intended)"
        )
    return None


def changed(desired: DesiredState, inventory: Mapping[str, Record]) -> set[ResourceId]:
    """What a new revision changes against the inventory: added, removed, or a
    new spec, policy (prune, drift ...) or dependency list."""
    policy_json = PolicyDumps()
    found = {rid for rid in inventory if rid not in desired.resources}
    for rid, res in desired.resources.items():
        record = inventory.get(rid)
        if (
            record is None
            or record.spec_hash != res.spec_hash
            or record.policy != policy_json(res.policy)
            or record.deps != desired.dependencies.get(rid, ())
            or record.instance != res.instance
        ):
            found.add(rid)
    return found


async def preview(
    registry: Registry, desired: DesiredState, inventory: Mapping[str, Record], concurrency: int
) -> list[Planned]:
    """What a pass would do, from one observation of everything; no transitions,
    no writes, no side effects."""
    observe = observer(registry, asyncio.Semaphore(concurrency))

    async def one(res: Resource) -> Planned:
        provider = registry[res.kind]
        describe = provider.describe(res.spec)
        instance = res.instance
        if res.policy.suspend:
            return Planned(res.id, res.kind, PlanAction.SUSPENDED, describe, instance=instance)
        if unchecked(res, inventory.get(res.id)):
            return Planned(
                res.id, res.kind, PlanAction.NONE, describe, note=UNCHECKED_NOTE, instance=instance
            )
        try:
            observed = await observe.submit(res.kind, res.spec)
            plan = provider.plan(res.spec, observed).without(res.policy.ignore_fields)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Planned(
                res.id,
                res.kind,
                PlanAction.ERROR,
                describe,
                error=error_text(exc),
                instance=instance,
            )
        record = inventory.get(res.id)
        if plan.empty:
            action = PlanAction.NONE
        elif (
            record is not None
            and record.spec_hash == res.spec_hash
            and res.policy.drift != "ignore"
        ):
            # a drift check, as in the engine: even an object deleted by hand
            heal = res.policy.drift == "heal"
            action = PlanAction.DRIFT if heal else PlanAction.DRIFT_WARN
        else:
            action = PlanAction.CREATE if plan.action is Action.CREATE else PlanAction.UPDATE
        return Planned(
            res.id, res.kind, action, describe, plan, observed=observed, instance=instance
        )

    planned = list(await asyncio.gather(*(one(r) for r in desired.resources.values())))
    removed, handed = removals(registry, desired, inventory)
    for rid in removed:
        record = inventory[rid]
        spec = stored_spec(registry, record)
        provider = registry.get(record.kind)
        describe = provider.describe(spec) if provider is not None and spec is not None else ""
        note = None
        why = gone(record, desired)
        if rid in handed:
            how = "renamed" if rid not in desired.elsewhere else "relabelled"
            action, note = PlanAction.RELEASE, f"({how}: now managed as {handed[rid]}, kept)"
        elif record.created and stored_policy(record).prune:
            action = PlanAction.DELETE
            if why:
                note = f"(created by reconciler, {why}: will delete)"
        else:
            action = PlanAction.RELEASE
            if why:
                note = f"(adopted or prune: false, {why}: will release, object kept)"
        planned.append(
            Planned(rid, record.kind, action, describe, note=note, instance=record.instance)
        )
    return planned
