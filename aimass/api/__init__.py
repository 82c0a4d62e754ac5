"""The control-plane REST API (FastAPI): submit, list, get, logs and cancel pipeline runs, with
bearer-token auth, body-size and rate limits, and an OpenAPI document.

Example:
    >>> from aimass.api import ApiConfig, create_app
    >>> app = create_app(ApiConfig.from_env())   # doctest: +SKIP
"""

from aimass.api.app import create_app
from aimass.api.config import ApiConfig

__all__ = ["ApiConfig", "create_app"]
