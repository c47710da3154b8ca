"""steadypool: ordered, batched, parallel work that never hangs silently."""

from ._exceptions import BrokenPool as BrokenPool
from ._pool import Pool as Pool
from ._worker import Worker as Worker
from ._worker import current_worker as current_worker

__version__ = "0.1.0"

__all__ = (
    "BrokenPool",
    "Pool",
    "Worker",
    "current_worker",
)
