"""Error replies of the API-server double, shaped like the real server's `Status` objects.

Clients (the official client, kubectl, the plugin) decide what happened from the HTTP code and `Status.reason`,
and show `Status.message`; an `Invalid` reply lists each offending field in `details.causes`. The constructors here
reproduce the real server's codes, reasons and message wording for the cases the double models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cc_gpu.kube.apiserver.resources import ResourceType


@dataclass(frozen=True)
class Cause:
    """One `details.causes` entry: `reason` is e.g. FieldValueInvalid, FieldValueRequired, FieldValueForbidden."""

    field: str
    reason: str
    message: str


class ApiStatus(Exception):
    """An error reply: raised anywhere in the double, turned into an HTTP response by the request handler."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        causes: tuple[Cause, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.causes = causes

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def to_status(self) -> dict[str, Any]:
        """The `Status` object the real server would send."""
        details = dict(self.details)
        if self.causes:
            details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in self.causes]
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            status["details"] = details
        return status


def success_status(rt: ResourceType, name: str, uid: str) -> dict[str, Any]:
    """The reply to a successful DELETE of a resource that does not return the deleted object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
    }


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": rt.group, "kind": rt.plural}


def not_found(rt: ResourceType, name: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiStatus:
    return ApiStatus(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiStatus:
    return ApiStatus(
        409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}', _details(rt, name)
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(rt: ResourceType, name: str, causes: list[Cause]) -> ApiStatus:
    summary = "; ".join(f"{c.field}: {c.message}" if c.field else c.message for c in causes)
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    details = {"name": name, "group": rt.group, "kind": rt.kind}
    return ApiStatus(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details, tuple(causes))


def bad_request(message: str, causes: tuple[Cause, ...] = ()) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message, causes=causes)


def method_not_allowed(method: str, path: str) -> ApiStatus:
    return ApiStatus(
        405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {method} {path}"
    )


def unsupported_media_type(content_type: str) -> ApiStatus:
    return ApiStatus(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def path_not_found(path: str) -> ApiStatus:
    return ApiStatus(404, "NotFound", f"the server could not find the requested resource ({path})")
