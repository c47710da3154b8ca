"""steadypool: ordered, batched, parallel work that never hangs silently."""

from ._diagnose import diagnose as diagnose
from ._exceptions import BrokenPool as BrokenPool
from ._exceptions import RemoteError as RemoteError
from ._exceptions import StallError as StallError
from ._exceptions import TaskTimeout as TaskTimeout
from ._exceptions import UnpicklableArgument as UnpicklableArgument
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._map import MapStream as MapStream
from ._pool import Pool as Pool
from ._records import BusyWorker as BusyWorker
from ._records import StallReport as StallReport
from ._stats import PoolStats as PoolStats
from ._stats import WorkerStats as WorkerStats
from ._stream import Stream as Stream
from ._worker import Worker as Worker
from ._worker import current_worker as current_worker

__version__ = "0.1.0"

__all__ = (
    "BrokenPool",
    "BusyWorker",
    "MapStream",
    "Pool",
    "PoolStats",
    "RemoteError",
    "StallError",
    "StallReport",
    "Stream",
    "TaskTimeout",
    "UnpicklableArgument",
    "Worker",
    "WorkerCrashed",
    "WorkerStats",
    "current_worker",
    "diagnose",
)
