"""The CLI's way to the operator API: one httpx client carrying the user's credential.

Operator commands go through the API rather than straight to Temporal, so the CLI and the API
enforce the same rules: the API proves who is acting and signs their decisions. The credential
is, in order: ``FIRELINE_TOKEN``; the file ``fireline login`` wrote (``FIRELINE_CREDENTIALS_FILE``,
default ``$XDG_CONFIG_HOME/fireline/credentials``); and, for a loopback API only, the
development credential ``fireline up`` left under the data folder.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, Field, ValidationError

from fireline.identity.dev import dev_credential_path
from fireline.identity.tokens import write_private
from fireline.messages import RunState, StepState
from fireline.operator import operations
from fireline.operator.auth import UNVERIFIED_HEADER, Principal, is_loopback
from fireline.operator.plan_preview import PlanPreview
from fireline.runtime.settings import Settings


class NotAuthorized(operations.OperationError):
    """The API did not accept the credential (401) or the person (403)."""


class ApiCompileError(operations.OperationError):
    """The playbook does not compile; ``problems`` are the API's located problem lines."""

    def __init__(self, message: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(message)


class _UnknownPlaybookAnswer(operations.OperationError):
    def __init__(self, known: list[str]) -> None:
        self.known = known
        super().__init__("unknown playbook")


class CredentialFile(BaseModel):
    """What ``fireline login`` stores (mode 0600)."""

    api_url: str | None = None
    token: str = Field(min_length=1)


@dataclass(frozen=True)
class Credential:
    token: str | None
    source: str


def credentials_path(settings: Settings) -> Path:
    if settings.credentials_file is not None:
        return settings.credentials_file
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fireline" / "credentials"


def read_credentials(path: Path) -> CredentialFile | None:
    """The login file, or None; refuses one that others may read (like ssh does its keys)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NotAuthorized(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` or `fireline login` again"
        )
    try:
        return CredentialFile.model_validate_json(path.read_text())
    except (ValidationError, OSError) as exc:
        raise NotAuthorized(f"{path} is not a credentials file: {exc}") from None


def write_credentials(path: Path, credentials: CredentialFile) -> None:
    write_private(path, credentials.model_dump_json(indent=2) + "\n")


def api_url(settings: Settings) -> str:
    """``FIRELINE_API_URL`` when set, else the URL of the last login, else the default."""
    if settings.api_url and "api_url" in settings.model_fields_set:
        return settings.api_url
    try:
        saved = read_credentials(credentials_path(settings))
    except NotAuthorized:
        saved = None
    if saved is not None and saved.api_url:
        return saved.api_url
    return settings.api_url or str(Settings.model_fields["api_url"].default)


def resolve_credential(settings: Settings, url: str) -> Credential:
    if settings.token is not None and settings.token.get_secret_value():
        return Credential(settings.token.get_secret_value(), "FIRELINE_TOKEN")
    path = credentials_path(settings)
    saved = read_credentials(path)
    if saved is not None:
        return Credential(saved.token, str(path))
    dev = dev_credential_path(settings)
    if is_loopback(urlsplit(url).hostname) and dev.exists():
        return Credential(dev.read_text().strip(), str(dev))
    return Credential(None, "none")


def _problem_line(problem: dict[str, Any]) -> str:
    where = problem.get("file") or "?"
    if problem.get("line"):
        where += f":{problem['line']}"
    step = f" step {problem['step']!r}:" if problem.get("step") else ""
    return f"{where}:{step} {problem.get('message', '')}"


class ApiClient:
    """Synchronous, one per command; every method returns the API's models."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        unverified_as: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if unverified_as:
            headers[UNVERIFIED_HEADER] = unverified_as
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, *, unverified_as: str | None = None) -> ApiClient:
        url = api_url(settings)
        # --as means "no credential": the API accepts it only in development mode.
        token = None if unverified_as else resolve_credential(settings, url).token
        return cls(url, token, unverified_as=unverified_as)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise operations.OperationError(
                f"cannot reach the Fireline API at {self.base_url}: {exc}; is `fireline up` "
                "running, or FIRELINE_API_URL set?"
            ) from None
        if response.is_success:
            return response.json()
        try:
            detail: Any = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text[:500]
        code = response.status_code
        if code in (401, 403):
            hint = " (set FIRELINE_TOKEN or run `fireline login`)" if code == 401 else ""
            raise NotAuthorized(f"{detail}{hint}")
        if code == 409:
            raise operations.OperationRefused(str(detail))
        if code == 404:
            if isinstance(detail, dict) and "known" in detail:
                raise _UnknownPlaybookAnswer([str(k) for k in detail["known"]])
            raise operations.RunNotFound(str(detail))
        if code == 400:
            raise operations.InvalidInputs(str(detail))
        if code == 422 and isinstance(detail, dict) and "problems" in detail:
            lines = [_problem_line(p) for p in detail["problems"]]
            raise ApiCompileError(str(detail.get("message")), lines)
        if code == 422:
            raise operations.InvalidInputs(json.dumps(detail))
        raise operations.OperationError(f"API answered {code}: {detail}")

    def whoami(self) -> Principal:
        return Principal.model_validate(self._call("GET", "/whoami"))

    def start_run(self, playbook: str, inputs: dict[str, Any]) -> operations.StartedRun:
        body = {"playbook": playbook, "inputs": inputs}
        try:
            data = self._call("POST", "/runs", json=body)
        except _UnknownPlaybookAnswer as exc:
            raise operations.UnknownPlaybook(playbook, exc.known) from None
        return operations.StartedRun.model_validate(data)

    def preview_plan(self, playbook: str, inputs: dict[str, Any]) -> PlanPreview:
        """``fireline plan``: what a run would do, read from the real systems, nothing changed."""
        body = {"playbook": playbook, "inputs": inputs}
        try:
            data = self._call("POST", "/plans/preview", json=body)
        except _UnknownPlaybookAnswer as exc:
            raise operations.UnknownPlaybook(playbook, exc.known) from None
        return PlanPreview.model_validate(data)

    def status(self, workflow_id: str) -> RunState:
        return RunState.model_validate(self._call("GET", f"/runs/{quote(workflow_id, safe='')}"))

    def execution(self, workflow_id: str) -> operations.RunSummary:
        data = self._call("GET", f"/runs/{quote(workflow_id, safe='')}/execution")
        return operations.RunSummary.model_validate(data)

    def list_runs(self, limit: int = 20) -> list[operations.RunSummary]:
        data = self._call("GET", "/runs", params={"limit": limit})
        return [operations.RunSummary.model_validate(r) for r in data]

    def _step(self, workflow_id: str, step: str, verb: str, body: dict[str, Any]) -> StepState:
        path = f"/runs/{quote(workflow_id, safe='')}/steps/{quote(step, safe='')}/{verb}"
        return StepState.model_validate(self._call("POST", path, json=body))

    def approve(self, workflow_id: str, step: str, comment: str = "") -> StepState:
        return self._step(workflow_id, step, "approve", {"comment": comment})

    def reject(self, workflow_id: str, step: str, comment: str = "") -> StepState:
        return self._step(workflow_id, step, "reject", {"comment": comment})

    def decide(
        self,
        workflow_id: str,
        step: str,
        action: str,
        comment: str = "",
        inputs: dict[str, Any] | None = None,
    ) -> StepState:
        body: dict[str, Any] = {"action": action, "comment": comment}
        if inputs:
            body["inputs"] = inputs
        return self._step(workflow_id, step, "decide", body)

    def cancel(self, workflow_id: str, reason: str = "") -> None:
        self._call("POST", f"/runs/{quote(workflow_id, safe='')}/cancel", json={"reason": reason})

    def follow(self, workflow_id: str, *, interval_s: float = 0.5) -> Iterator[RunState]:
        """Yield the run's state each time it changes, ending with its final state.

        Stops at a terminal phase, or when the workflow closed without reaching one.
        """
        last: str | None = None
        while True:
            state = self.status(workflow_id)
            fingerprint = state.model_dump_json()
            if fingerprint != last:
                last = fingerprint
                yield state
            if state.phase.terminal:
                return
            if self.execution(workflow_id).status != "running":
                final = self.status(workflow_id)
                if final.model_dump_json() != last:
                    yield final
                return
            time.sleep(interval_s)
