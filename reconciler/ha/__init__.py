"""High availability: the election of one leader per shard through a lease row in
the PostgreSQL store's database, with fencing (decision 0148).

- `lease`: the lease row taken, renewed, released and read (database time only);
- `elector`: the loop that campaigns, renews every third of the lease, and steps
  down when a renewal fails or its monotonic deadline passes;
- `role`: the daemon's role state (leader or standby, epoch, deadline, who leads)
  and `fence`, which the engine checks before each side effect.

The daemon (reconciler.daemon) wires it; nothing below the daemon imports it.
"""

from __future__ import annotations

from reconciler.ha.elector import Elector, margin
from reconciler.ha.lease import Holder, Lease, Term
from reconciler.ha.role import LeaseLost, Role, RoleState

__all__ = ["Elector", "Holder", "Lease", "LeaseLost", "Role", "RoleState", "Term", "margin"]
