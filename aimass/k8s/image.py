"""The AI Mass container image's name: the one place it is defined.

The Helm chart (``image.repository``; the tag defaults to the chart's appVersion), the RayJob and
RayService builders (their default ``image``), the ``k8s/`` samples and docs/install.md all use this
name; ``tests/image/test_image_name.py`` keeps them in step. Build the image with the repository's
``Containerfile`` (docs/install.md, "Build the image").

Example:
    >>> from aimass.k8s.image import default_image
    >>> default_image("0.1.0")
    'ghcr.io/aimass/aimass:0.1.0'
"""

from __future__ import annotations

from aimass import __version__

__all__ = ["DEFAULT_IMAGE", "IMAGE_REPOSITORY", "default_image"]

#: Registry and repository of the published image (the chart's ``image.repository``).
IMAGE_REPOSITORY = "ghcr.io/aimass/aimass"


def default_image(tag: str | None = None) -> str:
    """``IMAGE_REPOSITORY:tag``; the tag defaults to this aimass version (= the chart's appVersion)."""
    return f"{IMAGE_REPOSITORY}:{tag or __version__}"


#: The image of this aimass version: what the builders use when no image is given.
DEFAULT_IMAGE = default_image()
