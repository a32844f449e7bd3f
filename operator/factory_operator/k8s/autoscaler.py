"""The autoscaler's I/O: which of the three outcomes of ``plan.scaling`` a reconcile takes,
and the load read that a decision needs (``LoadReader``, off the request path).

Only the autoscaler's timer decides (``decide=True``): it reads Prometheus and calls the pure
``autoscale_pools``, or ``hold_at_min`` when the operator has no Prometheus URL. Every other
reconcile keeps the counts of the last decision (``held_autoscaling``), read back from the
factory's status, which is also where the decision's memory (windows, cooldown) lives: a
restarted operator carries on where the last one stopped.
"""

from __future__ import annotations

from datetime import datetime

from factory_operator.api import InferenceFactory
from factory_operator.plan import OperatorSettings
from factory_operator.plan.scaling import (
    AutoscalePlan,
    autoscale_pools,
    autoscaled,
    held_autoscaling,
    hold_at_min,
)

from .load import LoadReader
from .observe import World


async def plan_scaling(
    factory: InferenceFactory,
    world: World,
    settings: OperatorSettings,
    loads: LoadReader | None,
    *,
    decide: bool,
    now: datetime,
) -> AutoscalePlan | None:
    """The autoscaler's outcome for this reconcile; None for a factory without
    ``spec.autoscaling`` (its pools run replicas.min)."""
    if not autoscaled(factory):
        return None
    deployments = world.observed.deployments
    region = settings.region
    if not decide:
        return held_autoscaling(factory, world.regions, deployments, local_region=region)
    if loads is None:
        return hold_at_min(factory, world.regions, deployments, local_region=region)
    read = await loads.read(factory.metadata.namespace or "default", factory.metadata.name)
    return autoscale_pools(factory, world.regions, deployments, read, now, local_region=region)
