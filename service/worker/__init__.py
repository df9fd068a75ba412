"""The GPU worker, split by stage (see :mod:`service.worker.worker`)."""

from service.status import WorkerState
from service.worker.state import Prepared
from service.worker.worker import Worker, WorkerOptions

__all__ = ["Prepared", "Worker", "WorkerOptions", "WorkerState"]
