"""The hub on learner rank 0: leases, intake, buffer and weight serving over ZeroMQ.

`Hub` (in `service`) is the trainer's single entry; its parts live beside it.
"""

from asyncrl.learner.hub.groups import GroupData
from asyncrl.learner.hub.service import Hub, HubStopped, RewardFailing

__all__ = ["GroupData", "Hub", "HubStopped", "RewardFailing"]
