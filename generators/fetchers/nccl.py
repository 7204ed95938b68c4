"""The nccl transport: the backend's engine joins the learner's weight-update group (once per
connection) and receives each version as the learner broadcasts it, bucket by bucket, to the
plan the learner sends. Offered when the learner's Welcome says so and the backend declares
`capabilities.distributed_groups`; a failed pull is counted and the version fetched in chunks,
and a broken group is joined afresh next time."""

from __future__ import annotations

import logging

from asyncrl.generators.backends.base import DistributedGroups
from asyncrl.generators.fetchers.base import Fetched, WeightFetcher
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.session import LearnerGone, Session, Stopping
from asyncrl.generators.weights import WeightsError
from asyncrl.protocol.messages import (
    NcclGroup,
    NcclJoin,
    NcclPlan,
    NcclPull,
    WeightsAnnouncement,
    Welcome,
)

logger = logging.getLogger(__name__)


class NcclFetcher(WeightFetcher):
    how = "over nccl"

    def __init__(self, session: Session, backend: DistributedGroups, metrics: GeneratorMetrics):
        self.session = session
        self.backend = backend
        self.metrics = metrics
        self._group: str | None = None  # our engine's weight-update group, once joined

    def offered(self, welcome: Welcome) -> bool:
        self._group = None  # a group belongs to one learner connection: join again
        return welcome.nccl

    def fetch(self, ann: WeightsAnnouncement) -> Fetched:
        try:
            if self._group is None:
                self._group = self._join()
            plan = self.session.request(
                NcclPull(self.session.generator_id, ann.version, self._group)
            )
            if not isinstance(plan, NcclPlan):
                raise WeightsError(f"expected nccl_plan, got {plan.TYPE}")
            if plan.missing and plan.reason == "version no longer held":
                self.metrics.weight_errors.inc()
                return Fetched.DROPPED  # superseded: wait for the newer announcement
            if plan.missing:
                self._group = None
                raise WeightsError(plan.reason)
            self.backend.update_from_buckets(plan, ann.version, self._group)
        except (LearnerGone, Stopping):
            raise
        except Exception as exc:  # fall back to chunks for this version; count it
            self._group = None
            self.metrics.weight_errors.inc()
            logger.warning("version %d over nccl failed (%s); fetching chunks", ann.version, exc)
            return Fetched.DECLINED
        return Fetched.LOADED

    def _join(self) -> str:
        world = self.backend.nccl_world_size()
        group = self.session.request(NcclJoin(self.session.generator_id, world))
        if not isinstance(group, NcclGroup) or group.error:
            raise WeightsError(f"no weight-update group: {getattr(group, 'error', group)}")
        self.backend.join_update_group(
            group.address, group.port, group.group_name, group.backend, world
        )
        return group.group_name
