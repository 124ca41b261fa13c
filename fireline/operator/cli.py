"""The ``fireline`` command: run the stack, check playbooks, start and steer runs.

Exit codes: 0 success, 1 the operation failed or was refused (or a followed run did not
succeed), 2 the command line, the inputs or the playbook were wrong. Errors go to stderr.
Settings are built fresh for every invocation, so ``FIRELINE_*`` changes always apply.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.text import Text

from fireline.errors import CompileError
from fireline.identity.people import People
from fireline.identity.tokens import TokenStore, dump_records, tokens_path
from fireline.messages import DecisionAction, RunPhase, RunState, StepState, StepStatus
from fireline.operator import incident_cli, operations, render
from fireline.operator.auth import Principal
from fireline.operator.client import (
    ApiClient,
    ApiCompileError,
    CredentialFile,
    NotAuthorized,
    credentials_path,
    write_credentials,
)
from fireline.runtime.settings import DOMAINS, Settings

T = TypeVar("T")

app = typer.Typer(
    name="fireline",
    help="Incident-response runbooks as code, run durably on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


# --- plumbing -------------------------------------------------------------------------------


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    _err().print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}", EXIT_USAGE)


def parse_assignments(values: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; a key may be given once."""
    out: dict[str, str] = {}
    for raw in values or []:
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{raw!r} is not key=value")
        if key in out:
            raise typer.BadParameter(f"{key!r} is given twice")
        out[key] = value
    return out


def _assignments_callback(values: list[str] | None) -> list[str]:
    parse_assignments(values)
    return values or []


def _print_compile_error(exc: CompileError) -> None:
    err = _err()
    err.print("[bold red]error:[/] the playbook does not compile", markup=True)
    for problem in exc.problems:
        err.print(f"  {problem}", markup=False, soft_wrap=True)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


AsOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help=(
            "development mode only: act without a credential under this name, recorded as "
            "unverified (elsewhere the API refuses it)"
        ),
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="the run's workflow id")]
StepArg = Annotated[str, typer.Argument(help="the step id, as in the playbook")]
InputOption = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="KEY=VALUE",
        help="a playbook input; repeat for more",
        callback=_assignments_callback,
    ),
]


# --- running the stack ----------------------------------------------------------------------


@app.command()
def up(
    no_api: Annotated[bool, typer.Option("--no-api", help="do not serve the HTTP API")] = False,
    api_host: Annotated[str, typer.Option(help="address the API binds")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="port of the HTTP API")] = 8080,
    embedded: Annotated[
        bool | None,
        typer.Option(
            "--embedded/--no-embedded",
            help="force (or refuse) the embedded dev server; default: only when 7233 is free",
        ),
    ] = None,
) -> None:
    """Start the embedded Temporal dev server, the workers and the API, until Ctrl-C."""
    from fireline.runtime import stack
    from fireline.runtime.workers import exit_process

    argv = ["--api-host", api_host, "--api-port", str(api_port)]
    argv += ["--no-api"] if no_api else []
    argv += [] if embedded is None else ["--embedded" if embedded else "--no-embedded"]
    exit_process(stack.main(argv))


def _parse_domains(values: list[str] | None) -> list[str]:
    from fireline.runtime.workers import parse_domains

    try:
        return list(parse_domains(",".join(values))) if values else list(DOMAINS)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--domains") from None


@app.command()
def worker(
    domains: Annotated[
        list[str] | None,
        typer.Option("--domains", "-d", help="comma-separated domains (default: all)"),
    ] = None,
    workflows: Annotated[
        bool, typer.Option("--workflows/--no-workflows", help="also run playbook workflows")
    ] = True,
) -> None:
    """Run workers for the given domains (and the workflow queue) until SIGINT/SIGTERM."""
    from fireline.runtime import workers

    argv = ["--domains", ",".join(_parse_domains(domains))]
    argv += [] if workflows else ["--no-workflows"]
    workers.exit_process(workers.main(argv))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8080,
    head_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=300.0,
            help="seconds a client has to send a request's line and headers before it is "
            "disconnected (default 10, as under fireline up)",
        ),
    ] = None,
) -> None:
    """Serve the operator HTTP API, with the same connection limits as `fireline up`'s.

    A client trickling its request head in a byte at a time is cut off after
    ``--head-timeout``, so a few hundred slow clients cannot hold every connection.
    """
    import uvicorn

    from fireline.operator.api import create_app
    from fireline.operator.limits import HEAD_TIMEOUT_S, head_deadline_protocol
    from fireline.runtime.logging import configure_logging
    from fireline.runtime.workers import exit_process

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        http=head_deadline_protocol(head_timeout or HEAD_TIMEOUT_S),
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        limit_concurrency=1000,
    )
    exit_process(0)


# --- playbooks and modules ------------------------------------------------------------------


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="playbook files or directories")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compile every playbook and report each problem as file:line: step: message."""
    settings = _settings()
    chosen = paths or [settings.playbooks_dir]
    missing = [str(p) for p in chosen if not p.exists()]
    if missing:
        _fail(f"no such file or directory: {', '.join(missing)}", EXIT_USAGE)
    library = operations.load_library(settings, *chosen)
    results = {str(k): list(v) for k, v in library.validate_all().items()}
    failed = sorted(f for f, problems in results.items() if problems)
    if as_json:
        _echo_json(
            {
                "ok": not failed,
                "files": [
                    {
                        "file": f,
                        "ok": f not in failed,
                        "problems": [p.to_dict() for p in results[f]],
                    }
                    for f in sorted(results)
                ],
            }
        )
    else:
        out = _out()
        for f in sorted(results):
            mark = ("✗", "red") if f in failed else ("✓", "green")
            out.print(Text.assemble(mark, " ", f), soft_wrap=True)
            for problem in results[f]:
                out.print(f"  {problem}", markup=False, soft_wrap=True)
        out.print(f"{len(results)} file(s) checked, {len(failed)} with errors", markup=False)
    if not results:
        _fail(f"no playbooks found in {', '.join(map(str, chosen))}")
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _module_descriptions(domain: str | None) -> list[dict[str, Any]]:
    from fireline.modules import load_registry

    specs = sorted(load_registry().values(), key=lambda s: s.name)
    return [s.describe() for s in specs if domain is None or s.domain == domain]


@app.command()
def modules(
    name: Annotated[str | None, typer.Argument(help="show one module in detail")] = None,
    domain: Annotated[str | None, typer.Option(help="only modules of this domain")] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered modules and checks with their contracts."""
    if domain is not None and domain not in DOMAINS:
        _fail(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}", EXIT_USAGE)
    described = _module_descriptions(domain)
    if name is not None:
        found = [d for d in described if d["name"] == name]
        if not found:
            _fail(f"no module named {name!r}", EXIT_USAGE)
        if as_json:
            _echo_json(found[0])
        else:
            _out().print(render.module_detail(found[0]))
        return
    if as_json:
        _echo_json(described)
    else:
        _out().print(render.modules_table(described))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the playbook YAML (for editors and CI)."""
    from fireline.playbook.spec import PlaybookSpec

    _echo_json(PlaybookSpec.model_json_schema(by_alias=True))


# --- runs (through the operator API) ----------------------------------------------------------


def _api(factory: Callable[[ApiClient], T], settings: Settings, as_: str | None = None) -> T:
    """Call the API with the user's credential; every expected failure becomes message + code."""
    try:
        with ApiClient.from_settings(settings, unverified_as=as_) as api:
            return factory(api)
    except ApiCompileError as exc:
        err = _err()
        err.print("[bold red]error:[/] the playbook does not compile", markup=True)
        for line in exc.problems:
            err.print(f"  {line}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (operations.InvalidInputs, operations.UnknownPlaybook) as exc:
        _fail(str(exc), EXIT_USAGE)
    except NotAuthorized as exc:
        _fail(f"not authorised: {exc}")
    except operations.OperationRefused as exc:
        _fail(f"refused: {exc.reason}")
    except operations.OperationError as exc:
        _fail(str(exc))


def _approve_hints(previous: RunState | None, state: RunState) -> list[str]:
    """How to approve, printed once when a step starts waiting at its gate."""
    before = {s.id: s.status for s in previous.steps} if previous else {}
    return [
        f"  approve with: fireline approve {state.workflow_id} {s.id}"
        for s in state.steps
        if s.status == StepStatus.awaiting_approval
        and before.get(s.id) != StepStatus.awaiting_approval
    ]


def _follow_run(api: ApiClient, workflow_id: str, *, quiet: bool) -> RunState:
    """Show progress until the run ends; a Live table on a terminal, lines otherwise."""
    console = _out()
    final: RunState | None = None
    if quiet:
        for state in api.follow(workflow_id):
            final = state
    elif console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            for state in api.follow(workflow_id):
                live.update(render.live_view(state))
                final = state
    else:
        previous: RunState | None = None
        for state in api.follow(workflow_id):
            lines = render.changes(previous, state) + _approve_hints(previous, state)
            for line in lines:
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            previous = final = state
    assert final is not None, "follow always yields at least once"
    return final


@app.command()
def run(
    playbook: Annotated[str, typer.Argument(help="the playbook's name in the API's library")],
    inputs: InputOption = None,
    as_: AsOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="show progress until done")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a playbook run; with --follow, exit 0 only if it succeeds."""
    settings = _settings()
    given = parse_assignments(inputs)

    def go(api: ApiClient) -> tuple[operations.StartedRun, RunState | None]:
        started = api.start_run(playbook, given)
        if not as_json:
            out = _out()
            out.print(f"started {started.workflow_id}", markup=False)
            out.print(f"  {started.ui_url}", markup=False, soft_wrap=True)
        final = _follow_run(api, started.workflow_id, quiet=as_json) if follow else None
        return started, final

    started, final = _api(go, settings, as_)
    if as_json:
        data: dict[str, Any] = started.model_dump(mode="json")
        if final is not None:
            data["final"] = final.model_dump(mode="json")
        _echo_json(data)
    if final is None:
        return
    if not as_json:
        _print_outcome(final)
    if final.phase != RunPhase.succeeded:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def plan(
    playbook: Annotated[str, typer.Argument(help="the playbook's name in the API's library")],
    inputs: InputOption = None,
    as_: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Preview a playbook against the real systems, changing nothing: per step mutating,
    read-only or undetermined, its risk, gate and undo, and what each change would do."""
    settings = _settings()
    given = parse_assignments(inputs)
    preview = _api(lambda api: api.preview_plan(playbook, given), settings, as_)
    if as_json:
        typer.echo(preview.model_dump_json(indent=2))
    else:
        _out().print(render.plan_view(preview))


def _print_outcome(state: RunState) -> None:
    style = "green" if state.phase == RunPhase.succeeded else "red"
    line = Text.assemble("outcome: ", (state.phase.value, style))
    if state.reason:
        line.append(f": {state.reason}")
    _out().print(line, soft_wrap=True)


@app.command()
def status(run_id: RunArg, as_json: JsonOption = False) -> None:
    """Show a run: phase, steps, approvals, checks, compensations, timeline."""
    settings = _settings()
    state = _api(lambda api: api.status(run_id), settings)
    if as_json:
        typer.echo(state.model_dump_json(indent=2))
    else:
        _out().print(render.run_view(state))


def _emit_answer(verb: str, run_id: str, answer: StepState, as_json: bool) -> None:
    """The step as the workflow saw it right after accepting the decision."""
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    line = f"{verb} step {answer.id} of {run_id}"
    if answer.gate is not None:
        approved = sum(a.decision == "approved" for a in answer.approvals)
        line += f" ({approved}/{answer.gate.min_approvals} approvals)"
    _out().print(line, markup=False, soft_wrap=True)


@app.command()
def approve(
    run_id: RunArg,
    step: StepArg,
    as_: AsOption = None,
    comment: Annotated[str, typer.Option(help="recorded with the approval")] = "",
    as_json: JsonOption = False,
) -> None:
    """Approve a step waiting at its gate, as the person your credential proves."""
    settings = _settings()
    answer = _api(lambda api: api.approve(run_id, step, comment), settings, as_)
    _emit_answer("approved", run_id, answer, as_json)


@app.command()
def reject(
    run_id: RunArg,
    step: StepArg,
    as_: AsOption = None,
    comment: Annotated[str, typer.Option(help="recorded with the rejection")] = "",
    as_json: JsonOption = False,
) -> None:
    """Reject a step waiting at its gate; completed steps are compensated."""
    settings = _settings()
    answer = _api(lambda api: api.reject(run_id, step, comment), settings, as_)
    _emit_answer("rejected", run_id, answer, as_json)


@app.command()
def decide(
    run_id: RunArg,
    step: StepArg,
    action: Annotated[DecisionAction, typer.Argument(help="retry, skip or compensate")],
    as_: AsOption = None,
    comment: Annotated[str, typer.Option(help="recorded with the decision")] = "",
    inputs: InputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer a failed step that waits for a decision (on_failure: ask)."""
    settings = _settings()
    new_inputs = parse_assignments(inputs)
    if new_inputs and action != DecisionAction.retry:
        raise typer.BadParameter("only retry takes new inputs", param_hint="--input")
    answer = _api(
        lambda api: api.decide(run_id, step, action.value, comment, new_inputs or None),
        settings,
        as_,
    )
    _emit_answer(f"decided {action.value} for", run_id, answer, as_json)


@app.command()
def cancel(
    run_id: RunArg,
    as_: AsOption = None,
    reason: Annotated[str, typer.Option(help="recorded with the cancellation")] = "",
) -> None:
    """Cancel a run; the workflow compensates what already ran."""
    settings = _settings()
    _api(lambda api: api.cancel(run_id, reason), settings, as_)
    _out().print(f"cancellation requested for {run_id}", markup=False)


@app.command()
def runs(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List recent playbook runs."""
    settings = _settings()
    found = _api(lambda api: api.list_runs(limit), settings)
    if as_json:
        _echo_json([r.model_dump(mode="json") for r in found])
    else:
        _out().print(render.runs_table(found))


@app.command()
def alerts(
    unrouted: Annotated[
        bool, typer.Option("--unrouted", help="list the alerts no route claimed")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="unrouted alerts to list")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Alert ingress of the API: counters, or (--unrouted) the alerts no route claimed."""
    import httpx
    from rich.table import Table

    from fireline.operator.client import api_url, resolve_credential

    settings = _settings()
    base = api_url(settings)
    token = resolve_credential(settings, base).token
    path = f"/v1/alerts/unrouted?limit={limit}" if unrouted else "/v1/alerts/stats"
    try:
        answer = httpx.get(
            base.rstrip("/") + path,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=settings.http_timeout_seconds,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the API at {base}: {exc}")
    if answer.status_code != 200:
        _fail(f"the API answered {answer.status_code}: {answer.text[:500]}")
    data = answer.json()
    if as_json:
        _echo_json(data)
        return
    if unrouted:
        table = Table(title=f"unrouted alerts: {data['total']} in all, {data['kept']} kept")
        for column in ("stored", "source", "name", "labels"):
            table.add_column(column, overflow="fold")
        for item in data["latest"]:
            labels = " ".join(f"{k}={v}" for k, v in sorted(item["labels"].items()))
            table.add_row(item["stored_at"][:19], item["source"], item["name"], labels)
    else:
        stats = data["stats"]
        table = Table(title="alert ingress (this API process)")
        table.add_column("what")
        table.add_column("count", justify="right")
        for source, count in sorted(stats["notifications"].items()):
            table.add_row(f"notifications from {source}", str(count))
        for label in ("routed", "unrouted", "signals", "signalled_alerts", "largest_batch"):
            table.add_row(label.replace("_", " "), str(stats[label]))
        table.add_row("unrouted on disk", str(data["unrouted_total"]))
        for code, count in sorted(stats["refused"].items()):
            table.add_row(f"refused {code}", str(count))
    _out().print(table)


# --- credentials ------------------------------------------------------------------------------

token_app = typer.Typer(
    help="API tokens of this deployment (stored hashed; run where the API's data folder is).",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
incident_cli.register(app)


def _token_store(settings: Settings) -> TokenStore:
    return TokenStore.of(settings)


@token_app.command("issue")
def token_issue(
    person: Annotated[str, typer.Argument(help="a person of the catalog")],
    label: Annotated[str, typer.Option(help="what the token is for")] = "",
    valid_for: Annotated[
        str | None,
        typer.Option("--valid-for", help="e.g. 90d, 12h (default: until revoked)"),
    ] = None,
) -> None:
    """Make a token for PERSON and print it once; only its hash is kept."""
    settings = _settings()
    lifetime: timedelta | None = None
    if valid_for is not None:
        from fireline.playbook.durations import parse_duration

        try:
            lifetime = timedelta(seconds=parse_duration(valid_for))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--valid-for") from None
        if lifetime <= timedelta(0):
            raise typer.BadParameter("must be positive", param_hint="--valid-for")
    people = People.of(settings)
    try:
        known = people.names()
    except CompileError as exc:
        _print_compile_error(exc)
        raise typer.Exit(EXIT_USAGE) from None
    if person not in known:
        shown = ", ".join(sorted(known)) or "none"
        _fail(f"{person!r} is not a person in {people.path}; known: {shown}", EXIT_USAGE)
    token, record = _token_store(settings).issue(person, label, valid_for=lifetime)
    err = _err()
    err.print(
        f"token {record.id} for {person} (stored hashed in {tokens_path(settings)}); "
        "it is shown only now:",
        markup=False,
        soft_wrap=True,
    )
    typer.echo(token)


@token_app.command("list")
def token_list(as_json: JsonOption = False) -> None:
    """The issued tokens: id, person, label, when (never the tokens themselves)."""
    records = _token_store(_settings()).records()
    if as_json:
        typer.echo(dump_records(records))
        return
    _out().print(render.tokens_table(records))


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token by its id (the 8 hex after ``fl_``); the API refuses it at once."""
    removed = _token_store(_settings()).revoke(token_id)
    if removed is None:
        _fail(f"no token with id {token_id!r}", EXIT_USAGE)
    _out().print(f"revoked token {removed.id} of {removed.person}", markup=False)


key_app = typer.Typer(
    help="The decision key the API signs decisions with (every API process must share it).",
    no_args_is_help=True,
)
app.add_typer(key_app, name="key")


@key_app.command("init")
def key_init(as_json: JsonOption = False) -> None:
    """Make the decision key at FIRELINE_DECISION_KEY_FILE (or under the data folder) unless
    it exists; print its id and public key (what other deployments put in
    FIRELINE_DECISION_TRUSTED_KEYS). Safe to run again: an existing key is kept."""
    from fireline.identity.keys import DecisionKeyError, create_key, key_path, read_key

    path = key_path(_settings())
    try:
        made = not path.exists()
        key = create_key(path) if made else read_key(path)
    except (DecisionKeyError, OSError) as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        _echo_json({"key_id": key.key_id, "public_key": key.public, "path": str(path)})
        return
    verb = "made" if made else "kept"
    _out().print(f"{verb} decision key {key.key_id} at {path}", markup=False, soft_wrap=True)
    typer.echo(f"{key.key_id}={key.public}")


@app.command()
def login(
    url: Annotated[
        str | None, typer.Option("--api-url", help="the API (default: FIRELINE_API_URL)")
    ] = None,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="read the token from standard input")
    ] = False,
) -> None:
    """Check a token against the API and keep it (mode 0600) for later commands."""
    settings = _settings()
    base = url or settings.api_url
    if token_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass("Fireline token: ").strip()
    if not token:
        _fail("no token given", EXIT_USAGE)

    def check(api: ApiClient) -> Principal:
        return api.whoami()

    try:
        with ApiClient(base, token) as api:
            who = check(api)
    except NotAuthorized as exc:
        _fail(f"not authorised: {exc}")
    except operations.OperationError as exc:
        _fail(str(exc))
    path = credentials_path(settings)
    write_credentials(path, CredentialFile(api_url=base, token=token))
    _out().print(f"logged in to {base} as {who.person}; credential in {path}", markup=False)


@app.command()
def logout() -> None:
    """Forget the credential ``fireline login`` kept."""
    path = credentials_path(_settings())
    path.unlink(missing_ok=True)
    _out().print(f"removed {path}", markup=False)


@app.command()
def whoami(as_json: JsonOption = False) -> None:
    """Who the API takes you for, and whether that is verified."""
    settings = _settings()
    who = _api(lambda api: api.whoami(), settings)
    if as_json:
        typer.echo(who.model_dump_json(indent=2))
        return
    mark = "verified" if who.verified else "NOT verified"
    _out().print(f"{who.person} ({mark}, {who.method})", markup=False)


def main() -> None:
    """Console-script entry point.

    Leaves through ``exit_process``: once a Temporal client existed, normal interpreter
    finalization aborts now and then (SIGABRT), which would turn a clean exit 0 into 134.
    """
    from fireline.runtime.workers import exit_process

    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except KeyboardInterrupt:
        code = 130
    exit_process(code)


if __name__ == "__main__":
    main()
