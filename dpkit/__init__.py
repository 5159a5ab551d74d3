"""dpkit: run real multi-process data- and model-parallel training, measure it, and plot it."""

from .api import load_sweep, run, sweep
from .config import RunConfig
from .results import ResultFolderError, RunResult
from .runtime.launch import RankFailedError, RunTimeoutError

__all__ = ["RankFailedError", "ResultFolderError", "RunConfig", "RunResult", "RunTimeoutError", "load_sweep", "run", "sweep"]
__version__ = "0.1.0"
