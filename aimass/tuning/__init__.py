"""Ray Tune: the only package that imports ``ray.tune``. See :func:`aimass.tuning.search.run_search`."""

from aimass.tuning.search import SearchResult, run_search

__all__ = ["SearchResult", "run_search"]
