"""Typed errors for everything that can go wrong talking to the Kubernetes API server.

Callers decide what to do by type, never by parsing messages: a `NotFoundError` for a claim means "the claim is gone",
a `ConflictError` on a slice update means "re-read and try again", an `ApiUnavailableError` is a `TemporaryError`
the caller may retry after `retry_after` seconds. The real client (`cc_gpu.kube.client`) maps the HTTP status codes
of the server's `Status` replies onto these types; the API-server double produces exactly those codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cc_gpu.errors import ConfigError, KubeError, PermanentError, TemporaryError


@dataclass(frozen=True)
class FieldCause:
    """One entry of a `Status.details.causes` list: which field the server rejected and why."""

    field: str
    reason: str
    message: str


class ApiError(KubeError):
    """A request the API server answered with an error status (or could not answer at all)."""

    def __init__(self, message: str, *, code: int = 0, reason: str = "", causes: tuple[FieldCause, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.causes = causes


class NotFoundError(ApiError, PermanentError):
    """404: the object (or its namespace) does not exist."""


class AlreadyExistsError(ApiError, PermanentError):
    """409 AlreadyExists: a create named an object that already exists."""


class ConflictError(ApiError):
    """409 Conflict: a stale resourceVersion or a failed delete precondition; re-read the object and retry."""


class ExpiredError(ApiError):
    """410 Gone: a list or watch asked for a resourceVersion the server no longer keeps; relist."""


class InvalidError(ApiError, PermanentError):
    """422 Invalid (or 400 BadRequest): the server refused the body; `causes` name the offending fields."""


class ForbiddenError(ApiError, PermanentError):
    """401/403: the credentials do not allow this request."""


class ApiUnavailableError(ApiError, TemporaryError):
    """The server could not be reached, timed out, throttled us (429) or failed internally (5xx)."""

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        reason: str = "",
        causes: tuple[FieldCause, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, reason=reason, causes=causes)
        self.retry_after = retry_after


class KubeConfigError(KubeError, ConfigError):
    """The kubeconfig file or the in-cluster service-account configuration could not be loaded."""
