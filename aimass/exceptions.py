"""One error tree for AI Mass.

Every error carries three things a user needs: what was wrong, what was received, and how to fix it.
Errors are picklable so they cross Ray process boundaries intact, carry an HTTP status for the APIs,
and a ``retryable`` flag the orchestrator reads to decide whether to try a step again.

Example:
    >>> raise SpecError("`numWorkers` must be >= 1", got=0, fix="Set it to the number of training processes.",
    ...                 location="pipelines/x.yaml:12")
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AimassError",
    "SpecError",
    "SpecErrors",
    "StepError",
    "RetryableStepError",
    "StorageError",
    "TrackingError",
    "ServingError",
    "InvalidRequestError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "KubernetesError",
    "ExecutorError",
]


class AimassError(Exception):
    """Base of every AI Mass error.

    Args:
        message: the headline: what was wrong.
        got: the value that was received, if any (shown as ``got: ...``).
        fix: one sentence on how to fix it.
        location: where the problem is (``file:line`` for YAML, a JSON path for REST bodies).
    """

    code: str = "aimass_error"
    http_status: int = 500
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        got: Any = None,
        fix: str | None = None,
        location: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.message = message
        self.got = got
        self.fix = fix
        self.location = location
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.location:
            parts.append(f"{self.location}: ")
        parts.append(self.message)
        if self.got is not None:
            parts.append(f" (got {self.got!r})")
        if self.fix:
            parts.append(f". {self.fix}" if not self.message.endswith(".") else f" {self.fix}")
        return "".join(parts)

    def __reduce__(self):  # picklable across Ray processes
        return (_rebuild, (type(self), self.message, self.got, self.fix, self.location, self.retryable))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, used by ``--output json`` and the REST APIs."""
        return {
            "error": self.code,
            "message": self.message,
            "got": None if self.got is None else repr(self.got) if not isinstance(self.got, (str, int, float, bool)) else self.got,
            "fix": self.fix,
            "location": self.location,
            "retryable": self.retryable,
        }


def _rebuild(cls, message, got, fix, location, retryable):
    return cls(message, got=got, fix=fix, location=location, retryable=retryable)


class SpecError(AimassError):
    """The pipeline (or serving) spec a user wrote is invalid. Never retryable."""

    code = "invalid_spec"
    http_status = 422


class SpecErrors(SpecError):
    """Several spec problems found at once; ``errors`` holds each one."""

    def __init__(self, errors: list[SpecError], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{len(self.errors)} problem(s) in {source or 'the pipeline spec'}"
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in self.errors))

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (SpecErrors, (self.errors, self.source))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["errors"] = [e.to_dict() for e in self.errors]
        return d


class StepError(AimassError):
    """A step failed while running."""

    code = "step_failed"
    http_status = 500


class RetryableStepError(StepError):
    """A transient failure (network, storage 5xx, lost worker): the orchestrator may retry."""

    code = "step_failed_retryable"
    retryable = True


class StorageError(AimassError):
    code = "storage_error"
    http_status = 502


class TrackingError(AimassError):
    code = "tracking_error"
    http_status = 502


class ServingError(AimassError):
    code = "serving_error"
    http_status = 500


class InvalidRequestError(AimassError):
    code = "invalid_request"
    http_status = 400


class AuthError(AimassError):
    code = "unauthorized"
    http_status = 401


class NotFoundError(AimassError):
    code = "not_found"
    http_status = 404


class ConflictError(AimassError):
    code = "conflict"
    http_status = 409


class KubernetesError(AimassError):
    code = "kubernetes_error"
    http_status = 502


class ExecutorError(AimassError):
    code = "executor_error"
    http_status = 502
