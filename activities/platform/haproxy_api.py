"""HAProxy's runtime API over its admin socket: the commands Fireline sends and what it reads.

One command per connection (the socket's non-interactive mode): write the line, read until
HAProxy closes. Names are checked before they are written, because the runtime API reads
``;`` and newlines as command separators: a server called ``s1;shutdown sessions`` must never
reach the socket. Answers are parsed by the column names HAProxy prints, not by position, so
a version that adds columns still parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A backend or server name: HAProxy's own identifier characters, nothing that separates
commands."""
_NAME = re.compile(NAME_PATTERN)

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""An answer longer than this is not HAProxy's (or not one we should hold in memory)."""

AdminState = Literal["ready", "drain", "maint"]
Operational = Literal["stopped", "starting", "running", "stopping"]

# srv_admin_state bits, as src/server.h defines them.
ADMF_FMAINT = 0x01
ADMF_IMAINT = 0x02
ADMF_CMAINT = 0x04
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20
ADMF_HMAINT = 0x40
_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT | ADMF_HMAINT
_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN
_OPERATIONAL: dict[int, Operational] = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
_STATE_COLUMNS = ("be_name", "srv_name", "srv_op_state", "srv_admin_state", "srv_uweight")


class HaproxyTarget(BaseModel):
    """One HAProxy instance: its admin socket (``stats socket ... level admin``)."""

    model_config = ConfigDict(extra="forbid")

    socket: str | None = Field(default=None, description="path of a unix admin socket")
    address: str | None = Field(default=None, description="host:port of a TCP admin socket")
    timeout_s: float = Field(default=5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _one_endpoint(self) -> HaproxyTarget:
        if (self.socket is None) == (self.address is None):
            raise ValueError("set exactly one of socket (a path) or address (host:port)")
        if self.address is not None:
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("address must be host:port")
        return self

    def describe(self) -> str:
        return self.socket or f"tcp {self.address}"


class ServerState(BaseModel):
    """One server as ``show servers state`` (and ``show stat``, for sessions) report it."""

    backend: str
    server: str
    admin_state: AdminState
    admin_bits: int = Field(description="srv_admin_state as reported (maint/drain flags)")
    operational: Operational
    weight: int = Field(description="srv_uweight: the weight set by config or runtime API")
    initial_weight: int
    sessions: int | None = Field(default=None, description="scur from show stat")
    status: str | None = Field(default=None, description="status column of show stat")

    @property
    def healthy(self) -> bool:
        """Takes new traffic: running by its health check, not drained or in maintenance,
        and a weight above zero."""
        return self.operational == "running" and self.admin_state == "ready" and self.weight > 0

    @property
    def forced_bits(self) -> int:
        """The admin flags the runtime API sets (and so can restore)."""
        return self.admin_bits & (ADMF_FMAINT | ADMF_FDRAIN)


class HaproxyError(Exception):
    """Base of what talking to the admin socket can raise."""


class Unreachable(HaproxyError):
    """The socket could not be reached or did not answer in time: worth retrying."""


class Refused(HaproxyError):
    """HAProxy answered with an error or something that is not a valid answer."""


class UnknownName(Refused):
    """A backend or server that this HAProxy does not have."""


def admin_state_of(bits: int) -> AdminState:
    if bits & _MAINT:
        return "maint"
    if bits & _DRAIN:
        return "drain"
    return "ready"


def require_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise Refused(f"{what} {value!r} is not a HAProxy name ({NAME_PATTERN})")
    return value


def parse_servers_state(text: str) -> list[ServerState]:
    """``show servers state`` (format version 1): a version line, a ``#`` header, rows."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise Refused("show servers state answered nothing")
    if lines[0].strip() != "1":
        raise Refused(f"show servers state: unsupported format {lines[0][:40]!r} (expected 1)")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise Refused("show servers state: no column header")
    columns = lines[1].lstrip("#").split()
    missing = [c for c in _STATE_COLUMNS if c not in columns]
    if missing:
        raise Refused(f"show servers state: columns missing: {', '.join(missing)}")
    index = {name: i for i, name in enumerate(columns)}
    out: list[ServerState] = []
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < len(columns):
            raise Refused(f"show servers state: short row {line[:80]!r}")
        try:
            op = int(fields[index["srv_op_state"]])
            bits = int(fields[index["srv_admin_state"]])
            weight = int(fields[index["srv_uweight"]])
            initial = int(fields[index.get("srv_iweight", index["srv_uweight"])])
        except ValueError:
            raise Refused(f"show servers state: not a number in {line[:80]!r}") from None
        out.append(
            ServerState(
                backend=fields[index["be_name"]],
                server=fields[index["srv_name"]],
                admin_state=admin_state_of(bits),
                admin_bits=bits,
                operational=_OPERATIONAL.get(op, "stopped"),
                weight=weight,
                initial_weight=initial,
            )
        )
    return out


def parse_stat(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """``show stat`` CSV by (proxy, server name); FRONTEND/BACKEND rows included."""
    body = text.lstrip()
    if not body.startswith("#"):
        raise Refused(f"show stat: not CSV with a header: {body[:80]!r}")
    reader = csv.DictReader(io.StringIO(body[1:].lstrip()))
    if reader.fieldnames is None or not {"pxname", "svname", "scur", "status"} <= set(
        reader.fieldnames
    ):
        raise Refused("show stat: pxname, svname, scur or status column missing")
    return {(row["pxname"], row["svname"]): row for row in reader if row.get("pxname")}


class HaproxyAdmin:
    """The admin socket of one target. Stateless: every command opens its own connection."""

    def __init__(self, target: HaproxyTarget) -> None:
        self.target = target

    async def command(self, line: str) -> str:
        if "\n" in line or "\r" in line or ";" in line:
            raise Refused("one command per call: no newline or ';' in a runtime API command")
        timeout = self.target.timeout_s
        try:
            async with asyncio.timeout(timeout):
                if self.target.socket is not None:
                    reader, writer = await asyncio.open_unix_connection(self.target.socket)
                else:
                    assert self.target.address is not None
                    host, _, port = self.target.address.rpartition(":")
                    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                try:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    chunks: list[bytes] = []
                    total = 0
                    while data := await reader.read(65536):
                        total += len(data)
                        if total > MAX_ANSWER_BYTES:
                            raise Refused(f"answer to {line!r} exceeds {MAX_ANSWER_BYTES} bytes")
                        chunks.append(data)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise Unreachable(
                f"{self.target.describe()}: no answer to {line.split()[0]!r}... within "
                f"{timeout:g} s"
            ) from None
        except OSError as exc:
            raise Unreachable(f"{self.target.describe()}: {exc.strerror or exc}") from None
        return b"".join(chunks).decode("utf-8", "replace")

    async def servers(self, backend: str, *, sessions: bool = True) -> list[ServerState]:
        """The backend's servers in config order; UnknownName when there is no such backend."""
        require_name(backend, "backend")
        answer = await self.command(f"show servers state {backend}")
        if answer.strip().startswith("Can't find backend"):
            raise UnknownName(f"no backend {backend!r} on {self.target.describe()}")
        states = [s for s in parse_servers_state(answer) if s.backend == backend]
        if not sessions:
            return states
        stat = parse_stat(await self.command("show stat"))
        for state in states:
            row = stat.get((backend, state.server))
            if row is not None:
                state.sessions = int(row["scur"]) if row["scur"].isdigit() else None
                state.status = row["status"] or None
        return states

    async def set_state(self, backend: str, server: str, state: AdminState) -> None:
        await self._set(f"set server {_pair(backend, server)} state {state}")

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise Refused(f"weight {weight} is outside 0..256")
        await self._set(f"set weight {_pair(backend, server)} {weight}")

    async def _set(self, line: str) -> None:
        answer = (await self.command(line)).strip()
        if not answer:
            return
        if answer.startswith(("No such server", "No such backend")):
            raise UnknownName(f"{line!r}: {answer}")
        raise Refused(f"{line!r} refused: {answer[:200]}")


def _pair(backend: str, server: str) -> str:
    return f"{require_name(backend, 'backend')}/{require_name(server, 'server')}"
