"""What every weight fetcher is: one transport that tries to bring an announced version into
the backend, and says how that went so the next transport can try."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from asyncrl.protocol.messages import WeightsAnnouncement, Welcome


class Fetched(Enum):
    LOADED = "loaded"  # the backend holds the version
    DROPPED = "dropped"  # superseded or rejected: wait for the next announcement
    DECLINED = "declined"  # not possible this way (counted if it failed): the next one tries


class WeightFetcher:
    """One transport. `fetch` never raises for the version's own faults (it counts them and
    answers DROPPED or DECLINED); a learner that is gone or a shutdown propagates."""

    how: ClassVar[str]  # how a version loaded this way came, for the log: "in chunks"

    def offered(self, welcome: Welcome) -> bool:
        """Whether this learner connection offers this transport (asked on each connect)."""
        return True

    def fetch(self, ann: WeightsAnnouncement) -> Fetched:
        raise NotImplementedError
