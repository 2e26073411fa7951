"""The one progress callback every long computation takes."""

from collections.abc import Callable

__all__ = ["Progress"]

# ``progress(stage, fraction)``: a stage name (``knn``, ``layout``, ``check``...) and the overall
# fraction done, 0..1. An exception it raises aborts the work (a job runner cancels that way).
Progress = Callable[[str, float], None]
