"""The inference client: ``from aimass.client import Client`` (also ``aimass.Client``).

See :class:`aimass.serving.client.Client`.
"""

from aimass.serving.client import Client, InferResult

__all__ = ["Client", "InferResult"]
