"""Background duties of a running server: the replica heartbeat, recovering the holds of replicas
that died, and pruning old usage rows."""

from __future__ import annotations

import asyncio
import logging

from glmaas.api.state import AppState
from glmaas.platform.recovery import HEARTBEAT_S, heartbeat, recover, retire
from glmaas.platform.retention import prune_usage_records

log = logging.getLogger("glmaas.housekeeping")

RECOVER_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0


async def run_housekeeping(state: AppState) -> None:
    """Runs until cancelled."""
    since_recover = since_prune = 0.0
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        since_recover += HEARTBEAT_S
        since_prune += HEARTBEAT_S
        try:
            with state.db.session() as session, session.begin():
                heartbeat(session, state.meter.owner)
            if since_recover >= RECOVER_EVERY_S:
                since_recover = 0.0
                n = recover(state.db.session, state.meter.owner, state.meter.limiter.forget)
                if n:
                    log.warning("settled %d requests left open by a replica that stopped", n)
            if since_prune >= PRUNE_EVERY_S:
                since_prune = 0.0
                with state.db.session() as session, session.begin():
                    prune_usage_records(session, state.usage_retention_days)
        except Exception:  # a database hiccup must not end the loop; the next round retries
            log.exception("housekeeping round failed")


def retire_replica(state: AppState) -> None:
    """On a clean shutdown: every request has settled, so this replica's row can go."""
    with state.db.session() as session, session.begin():
        retire(session, state.meter.owner)
