"""Kubernetes API errors as ``Status`` objects.

Every failure the emulator reports is an :class:`ApiError` carrying the HTTP code, the machine-readable
``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``, ``Expired``...) and details, so
the HTTP layer and the watch stream render the exact ``Status`` document a real apiserver sends and the
official clients raise ``ApiException`` with the expected ``status``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failed API operation; :meth:`status` renders it as a ``meta/v1 Status``."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str = "",
        group: str = "",
        kind: str = "",
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes or []

    def status(self) -> dict[str, Any]:
        """The ``Status`` object a real apiserver returns for this error."""
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            out["details"] = details
        return out


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    """404 for a named object that does not exist."""
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found', name=name, group=group,
                    kind=resource)


def already_exists(resource: str, group: str, name: str) -> ApiError:
    """409 for a create whose name is taken."""
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists', name=name,
                    group=group, kind=resource)


def conflict(resource: str, group: str, name: str) -> ApiError:
    """409 for a write whose resourceVersion precondition is stale."""
    msg = (f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": the object has been modified; '
           "please apply your changes to the latest version and try again")
    return ApiError(409, "Conflict", msg, name=name, group=group, kind=resource)


def invalid(kind: str, group: str, name: str, field: str, detail: str) -> ApiError:
    """422 for an object that fails validation."""
    msg = f'{kind}.{group} "{name}" is invalid: {field}: {detail}' if group else f'{kind} "{name}" is invalid: ' \
        f"{field}: {detail}"
    cause = {"reason": "FieldValueInvalid", "message": detail, "field": field}
    return ApiError(422, "Invalid", msg, name=name, group=group, kind=kind, causes=[cause])


def bad_request(message: str) -> ApiError:
    """400 for a malformed request."""
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    """410 for a watch from a resourceVersion older than the retained history."""
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str) -> ApiError:
    """405 for a verb the resource does not support."""
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    """415 for a body (patch) type the resource does not accept."""
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                    f"media types include: application/json, application/merge-patch+json; got {content_type!r}")
