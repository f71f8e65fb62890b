"""`haven`: run the system, its parts, and the small administrative commands."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import secrets
import signal
import sys
from datetime import timedelta

import structlog

from haven.logging import configure_logging
from haven.settings import Settings, get_settings

log = structlog.get_logger("haven")

SWEEP_EVERY = timedelta(seconds=15)
DEV_ORGANISATIONS = [("ngo-1", "Partner NGO One", "standard"), ("ngo-2", "Partner NGO Two", "high")]


class Unavailable(Exception):
    """A service this part needs cannot be reached."""


class Misconfigured(Exception):
    """Settings that must not be combined."""


def _parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if not text or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError("a duration like 30m, 8h or 7d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def build_parser() -> argparse.ArgumentParser:
    """Every `haven` command (the compose file's commands are checked against it)."""
    parser = argparse.ArgumentParser(prog="haven", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="everything on one machine: Temporal dev server, worker and API "
                        "(and the local Stripe server with HAVEN_LOCAL_STRIPE=true)")
    commands.add_parser("api", help="the HTTP API only")
    commands.add_parser("worker", help="the Temporal worker only")
    commands.add_parser("migrate", help="bring the app database to the newest schema")
    token = commands.add_parser("token", help="print a dev-mode bearer token")
    token.add_argument("--role", action="append", required=True, help="repeat for several roles")
    token.add_argument("--sub", required=True, help="the user's id")
    token.add_argument("--org", help="the user's organisation (required for intermediaries)")
    token.add_argument("--ttl", type=_parse_duration, default=timedelta(hours=8))
    org = commands.add_parser("org", help="register or update an intermediary organisation")
    org.add_argument("id")
    org.add_argument("--name", required=True)
    org.add_argument("--trust", choices=["low", "standard", "high"], default="standard")
    org.add_argument("--suspend", action="store_true")
    staff = commands.add_parser("staff", help="add or change a person on the staff roster (the first administrator, say)")
    staff.add_argument("subject", help="the person's `sub` at the identity provider (HAVEN_JWT_ISSUER), exactly")
    staff.add_argument("--name", required=True)
    staff.add_argument("--email", required=True)
    staff.add_argument("--role", action="append", required=True, choices=["caseworker", "director", "finance", "admin"],
                       help="repeat for several roles")
    staff.add_argument("--inactive", action="store_true", help="take them off the roster: they can no longer act")
    from haven.exports import cli as export_cli  # `haven export ledger|audit …`

    export_cli.add_parser(commands)
    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="recompute the audit log's hash chain; exit 1 naming the first event "
                              "altered, inserted or removed")
    temporal = commands.add_parser("temporal", help="the Temporal namespace haven runs in")
    temporal_commands = temporal.add_subparsers(dest="temporal_command", required=True)
    temporal_commands.add_parser("setup", help="register haven's search attributes in HAVEN_TEMPORAL_NAMESPACE (safe to repeat)")
    keys = commands.add_parser("keys", help="generate keys for the settings")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    new_key = keys_commands.add_parser("new", help="a new AES-256 key as id:base64key, for HAVEN_PAYLOAD_KEYS or HAVEN_MASTER_KEYS")
    new_key.add_argument("--id", required=True, help="the key's id, e.g. 2027-01 (letters, digits, '-', '_')")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        from haven.keyring import KeyRing

        print(KeyRing.generate(args.id))
        return 0
    settings = get_settings()
    configure_logging(dev_mode=settings.dev_mode)

    if args.command == "token":
        return _token(settings, args)
    if args.command == "migrate":
        from haven.db.migrate import upgrade

        upgrade(settings.async_database_url)
        print("database is at the newest schema")
        return 0
    runners = {
        "run": _run_all,
        "api": lambda s: _run_part(s, _serve_api, serves_worker=False),
        "worker": lambda s: _run_part(s, _serve_worker),
        "org": lambda s: _org(s, args),
        "staff": lambda s: _staff(s, args),
        "export": lambda s: _export(s, args),
        "audit": lambda s: _audit_verify(s),
        "temporal": lambda s: _temporal_setup(s),
    }
    from api.jwks import ConfigurationError
    from haven.keys import MissingSecret
    from haven.keyring import KeyRingError

    try:
        if args.command in ("api", "worker") and (problem := settings.local_stripe_problem(args.command)):
            raise Misconfigured(problem)
        if args.command == "api":
            from api.auth import TokenVerifier

            TokenVerifier(settings)  # a wrong identity setup is reported before anything starts
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(runners[args.command](settings)) or 0
    except (ConfigurationError, MissingSecret, KeyRingError, Unavailable, Misconfigured) as error:
        print(f"haven: {error}", file=sys.stderr)
        return 2
    return 0


def _token(settings: Settings, args) -> int:
    from api.auth import TokenVerifier
    from haven.grant_request import Role

    try:
        roles = [Role(r) for r in args.role]
    except ValueError:
        print(f"roles are: {', '.join(r.value for r in Role)}", file=sys.stderr)
        return 2
    if Role.INTERMEDIARY in roles and not args.org:
        print("an intermediary's token needs --org", file=sys.stderr)
        return 2
    # Tokens signed with the dev secret are what this command is for, whichever terminal runs it.
    dev = settings.model_copy(update={"dev_mode": True})
    print(TokenVerifier(dev).issue(args.sub, roles, args.org, args.ttl))
    return 0


async def _temporal_setup(settings: Settings) -> int:
    from temporalio.service import RPCError

    from haven.search_attributes import cloud_command, missing, register

    client = await _connect_temporal(settings)
    namespace = settings.temporal_namespace
    try:
        added = await register(client, namespace)
    except RPCError as error:
        names = await missing(client, namespace)
        print(f"haven: could not register the search attributes {names} in {namespace}: {error.message}", file=sys.stderr)
        print(f"On Temporal Cloud, register them with: {cloud_command(namespace, names)}", file=sys.stderr)
        return 1
    print(f"registered in {namespace}: {', '.join(added)}" if added else f"{namespace} already has haven's search attributes")
    return 0


async def _export(settings: Settings, args) -> int:
    from haven.exports import cli as export_cli
    from haven.exports.sources import ExportFailed

    try:
        return await export_cli.run(settings, args)
    except ExportFailed as failure:  # nothing was written (see write_export)
        print(f"haven export: {failure}", file=sys.stderr)
        return 1


async def _org(settings: Settings, args) -> int:
    from haven.db import Database, utcnow
    from haven.db.models import Organisation

    from haven.roster import registered_organisation

    db = Database(settings.async_database_url)
    async with db.sessions() as session:
        namesake = await registered_organisation(session, args.id)
    if namesake != args.id:
        await db.dispose()
        print(f"haven org: {args.id!r} is the same name as the registered organisation {namesake!r}", file=sys.stderr)
        return 1
    async with db.transaction() as session:
        existing = await session.get(Organisation, args.id)
        if existing is None:
            session.add(
                Organisation(id=args.id, name=args.name, trust_level=args.trust, active=not args.suspend, created_at=utcnow(), updated_at=utcnow())
            )
        else:
            existing.name, existing.trust_level, existing.active = args.name, args.trust, not args.suspend
    await db.dispose()
    print(f"organisation {args.id}: trust {args.trust}, {'suspended' if args.suspend else 'active'}")
    return 0


async def _staff(settings: Settings, args) -> int:
    import getpass

    from pydantic import ValidationError

    from haven.db import Database
    from haven.grant_request import Actor, Role
    from haven.roster import RosterRefused, StaffMemberInput, save_staff_member

    try:
        data = StaffMemberInput(name=args.name, email=args.email, roles=args.role, active=not args.inactive)
    except ValidationError as error:
        print(f"haven staff: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}", file=sys.stderr)
        return 1
    db = Database(settings.async_database_url)
    try:
        member, created = await save_staff_member(
            db, Actor(subject=f"cli:{getpass.getuser()}", roles=[Role.ADMIN]), settings.jwt_issuer, args.subject, data
        )
    except RosterRefused as refusal:
        print(f"haven staff: {refusal}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    state = "active" if member.active else "inactive"
    print(f"{'added' if created else 'changed'} {member.subject} ({member.issuer}): {', '.join(member.roles)}, {state}")
    return 0


async def _audit_verify(settings: Settings) -> int:
    from haven.audit_chain import verify_chain
    from haven.db import Database

    db = Database(settings.async_database_url)
    try:
        report = await verify_chain(db)
    finally:
        await db.dispose()
    print(report.describe())
    return 0 if report.intact else 1


DEV_STAFF = [
    ("cw-1", "Caseworker One", ["caseworker"]),
    ("cw-2", "Caseworker Two", ["caseworker"]),
    ("dir-1", "Director One", ["director"]),
    ("fin-1", "Finance One", ["finance"]),
    ("adm-1", "Admin One", ["admin"]),
]


async def _seed_dev_organisations(db, settings: Settings) -> None:
    """Dev mode only: two partner organisations and a small roster, so `make run` can be tried."""
    from haven.db import utcnow
    from haven.db.models import Organisation, StaffMember
    from haven.identifiers import canonical

    async with db.transaction() as session:
        for org_id, name, trust in DEV_ORGANISATIONS:
            if await session.get(Organisation, org_id) is None:
                session.add(
                    Organisation(id=org_id, name=name, trust_level=trust, active=True,
                                 notification_email=f"alerts@{org_id}.example.org", created_at=utcnow())  # fmt: skip
                )
        for subject, name, roles in DEV_STAFF:
            if await session.get(StaffMember, (settings.jwt_issuer, subject)) is None:
                now = utcnow()
                email = f"{subject}@example.org"
                session.add(
                    StaffMember(
                        issuer=settings.jwt_issuer, subject=subject, subject_key=canonical(subject), name=name,
                        email=email, roles=roles, active=True, created_at=now, updated_at=now,
                    )  # fmt: skip
                )
    await _seed_dev_budget(db, settings)


async def _seed_dev_budget(db, settings: Settings) -> None:
    """Dev mode only: this year's budget for every category (1,000,000.00 in the base currency), so
    approved requests are paid; finance changes it through the API."""
    from datetime import date

    from haven import ledger
    from haven.db import utcnow
    from haven.db.models import BudgetAllocation
    from haven.grant_request import Category
    from haven.money import Money
    from policies import load_policy

    policy = load_policy(settings.policy_file).policy
    year = utcnow().year
    async with db.transaction() as session:
        for category in Category:
            if await session.get(BudgetAllocation, ledger.allocation_id(category, date(year, 1, 1))) is None:
                amount = Money(minor_units=100_000_000, currency=policy.base_currency)
                await ledger.set_allocation(session, category, date(year, 1, 1), date(year, 12, 31), amount, "dev-seed")


async def _serve_worker(settings: Settings, client, db, stop: asyncio.Event, **worker_options) -> None:
    """`worker_options` go to the Temporal worker (the fault-matrix harness adds an interceptor)."""
    from haven.intake import Intake, start_unstarted
    from haven.keys import case_keys, pseudonym_index_key
    from haven.notifications import NotificationDispatcher
    from haven.schedules import ensure_schedules
    from temporalio.service import RPCError

    from haven.search_attributes import missing as missing_search_attributes
    from haven.worker import build_worker
    from policies import load_policy

    intake = Intake(
        db, client, settings.task_queue, load_policy(settings.policy_file), pseudonym_index_key(settings),
        settings.payment_rails, case_keys=case_keys(settings),
    )  # fmt: skip
    try:
        absent = await missing_search_attributes(client, settings.temporal_namespace)
    except RPCError as error:  # a namespace whose attributes this client may not list (Temporal Cloud)
        log.warning("search_attributes_unchecked", namespace=settings.temporal_namespace, error=error.message)
        absent = []
    if absent:
        raise Misconfigured(f"the namespace {settings.temporal_namespace} lacks haven's search attributes "
                            f"{', '.join(absent)}: run `haven temporal setup` first")  # fmt: skip
    worker = build_worker(client, db, settings, **worker_options)
    await ensure_schedules(client, settings)  # the daily reconciliation, when Stripe is configured
    # Delivers the outbox the activities write: e-mail and signed webhooks, until `stop`.
    notifications = NotificationDispatcher(db, settings)

    async def sweep() -> None:
        while not stop.is_set():
            try:
                started = await start_unstarted(intake)
            except Exception as error:  # noqa: BLE001 - a database outage must not stop the worker
                log.error("intake_sweep_failed", error=type(error).__name__)
                started = 0
            if started:
                log.info("intake_sweep_started_workflows", count=started)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_EVERY.total_seconds())

    async with worker:
        await asyncio.gather(sweep(), notifications.run(stop), stop.wait())


async def _serve_api(settings: Settings, client, db, stop: asyncio.Event) -> None:
    import uvicorn

    from api.app import create_app
    from api.server import uvicorn_config

    app = create_app(settings, db=db, client=client)
    server = uvicorn.Server(uvicorn_config(app, settings))  # with deadlines for slow clients
    server.install_signal_handlers = lambda: None  # we handle signals for all parts together
    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; end the other parts cleanly instead
            raise RuntimeError(f"the API could not listen on {settings.api_host}:{settings.api_port}") from None
        if not server.started:
            raise RuntimeError(f"the API could not listen on {settings.api_host}:{settings.api_port}")

    task = asyncio.create_task(serve())
    await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


DATABASE_WAIT = timedelta(minutes=2)


async def _until_database_answers(step) -> None:
    """Runs `step` (the schema brought up to date), again while the database cannot be reached, for
    up to DATABASE_WAIT: a process started while PostgreSQL restarts waits for it, not exits."""
    from sqlalchemy.exc import OperationalError

    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + DATABASE_WAIT.total_seconds(), 0.5
    while True:
        try:
            return await step()
        except OperationalError as error:
            if loop.time() + pause > deadline:
                raise Unavailable(f"cannot reach the database (HAVEN_DATABASE_URL): {str(error.orig).splitlines()[0]}") from None
            log.warning("database_unreachable_waiting", retry_in_seconds=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)


async def _prepare(settings: Settings, *, serves_worker: bool = True):
    from haven.db import Database
    from haven.db.migrate import upgrade_async

    await _until_database_answers(lambda: upgrade_async(settings.async_database_url))
    db = Database(settings.async_database_url)
    runtime = None
    if serves_worker and settings.worker_metrics_address:
        from haven.worker_metrics import telemetry_runtime

        runtime = telemetry_runtime(settings.worker_metrics_address)
    try:
        client = await _connect_temporal(settings, runtime, service_name="haven-worker" if serves_worker else "haven-api")
    except Unavailable:
        await db.dispose()
        raise
    return db, client


_temporal_bridge_started = False


async def _connect_temporal(settings: Settings, runtime=None, *, service_name: str = "haven"):
    from haven.temporal import connect

    global _temporal_bridge_started
    _temporal_bridge_started = True
    try:
        return await connect(settings, runtime, service_name=service_name)
    except RuntimeError:
        raise Unavailable(f"cannot reach Temporal at {settings.temporal_address} (HAVEN_TEMPORAL_ADDRESS)") from None


async def _run_part(settings: Settings, serve, *, serves_worker: bool = True) -> int:
    """One part (API or worker) on its own, as production runs them."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    db, client = await _prepare(settings, serves_worker=serves_worker)
    await serve(settings, client, db, stop)
    await db.dispose()
    return 0


async def _run_all(settings: Settings) -> int:
    from haven import devserver

    if not settings.dev_mode:
        print("haven run is the embedded development setup: set HAVEN_DEV_MODE=true (make run does)", file=sys.stderr)
        return 2
    if problem := settings.local_stripe_problem():
        raise Misconfigured(problem)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    stripe_server = None
    if settings.local_stripe:
        stripe_server, settings = _start_local_stripe(settings)
    # Temporal's web UI shows decrypted payloads through haven's codec endpoint. That UI has no
    # sign-in, so it gets an address of its own, with a secret made for this run (dev mode only;
    # see api/routes/codec.py), on the API as it listens on this machine.
    settings = settings.model_copy(update={"codec_ui_secret": secrets.token_urlsafe(32)})
    try:
        server = devserver.start_dev_server(settings, codec_endpoint=f"{_local_api_url(settings)}/v1/codec/ui/{settings.codec_ui_secret}")
        try:
            await devserver.wait_until_serving(settings, server)
            db, client = await _prepare(settings)
            await _seed_dev_organisations(db, settings)
            _print_welcome(settings)
            parts = [_serve_worker(settings, client, db, stop), _serve_api(settings, client, db, stop)]
            if stripe_server is not None:
                parts.append(_watch_local_stripe(stripe_server, stop))
            failed = await _run_parts(stop, *parts)
            await db.dispose()
            return 1 if failed else 0
        finally:
            devserver.stop(server)
            print("haven stopped; everything is kept under", settings.var_dir)
    finally:
        if stripe_server is not None:
            stripe_server.stop()  # after the worker: a payment under way finishes or is retried next time


def _local_api_url(settings: Settings) -> str:
    """The API as a client on this machine reaches it."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.api_port}"


def _start_local_stripe(settings: Settings):
    """Dev mode: the local Stripe-compatible server (seeded with `acct_devpayee` and a balance),
    and the settings that point the worker and the API at it, webhooks included."""
    import secrets

    from haven.stripe_local import LocalStripe

    server = LocalStripe(port=settings.local_stripe_port, seed_dev=True)
    try:
        server.start()
    except OSError as error:
        raise Unavailable(
            f"the local Stripe server could not listen on 127.0.0.1:{settings.local_stripe_port} "
            f"(HAVEN_LOCAL_STRIPE_PORT): {error.strerror or error}"
        ) from None
    webhook_secret = settings.stripe_webhook_secret or f"whsec_{secrets.token_hex(24)}"
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    server.control.register_webhook(f"http://{host}:{settings.api_port}/v1/webhooks/stripe", webhook_secret, mode="async")
    return server, settings.model_copy(
        update={"stripe_api_key": server.api_key, "stripe_api_base": server.url, "stripe_webhook_secret": webhook_secret}
    )


async def _watch_local_stripe(server, stop: asyncio.Event) -> None:
    """The local Stripe server is one of the parts: if it dies, everything stops."""
    while not stop.is_set():
        if not server.running:
            raise RuntimeError("the local Stripe server stopped")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1)


async def _run_parts(stop: asyncio.Event, *parts) -> bool:
    """Runs the parts until a stop is asked for or one of them fails; then stops all of them
    (before the Temporal server goes away, so the worker can shut down cleanly)."""
    tasks = [asyncio.create_task(part) for part in parts]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        log.error("part_failed", error=str(error) or type(error).__name__)
    return bool(errors)


def _print_welcome(settings: Settings) -> None:
    api = f"http://{settings.api_host}:{settings.api_port}"
    if settings.smtp_host:
        mail = f"sent through {settings.smtp_host}:{settings.smtp_port}"
    else:
        mail = f"{settings.var_dir / 'mail'}  (one .eml file per e-mail; set HAVEN_SMTP_HOST to send)"
    if settings.local_stripe:
        stripe = (
            f"local Stripe server {settings.stripe_api_base}  (test mode; in memory: a restart forgets its transfers)\n"
            '               a payee with "rail": "stripe", "stripe_account": "acct_devpayee" is paid through it;\n'
            f"               its transfers: {settings.stripe_api_base}/_control/transfers"
        )
    elif settings.stripe_api_key:
        stripe = f"Stripe Connect transfers through {settings.stripe_api_base or 'Stripe (api.stripe.com)'}"
    else:
        stripe = "off: payees are paid manually (HAVEN_LOCAL_STRIPE=true starts a local Stripe server)"
    print(
        f"""
haven is running (dev mode: HS256 tokens, secrets generated under {settings.var_dir}/secrets)
  API docs     {api}/docs
  Temporal UI  http://{settings.temporal_address.rsplit(':', 1)[0]}:{settings.temporal_ui_port}  (payloads encrypted; decoded for the UI by {_local_api_url(settings)}/v1/codec/ui/…, an address made for this run)
  Data         {settings.var_dir}  (app database and Temporal history; they survive restarts)
  E-mail       {mail}
               to the dev roster cw-1, cw-2 (caseworkers), dir-1 (director), fin-1 (finance), adm-1 (admin) @example.org
  Stripe       {stripe}

Get a token, in another terminal:
  .venv/bin/haven token --role intermediary --sub int-1 --org ngo-1
  .venv/bin/haven token --role caseworker --sub cw-1   (and cw-2: larger grants need four eyes)
  .venv/bin/haven token --role finance --sub fin-1
Ctrl-C stops everything.
""",
        flush=True,
    )


def entrypoint() -> None:
    """The `haven` command. Once a Temporal client has existed, the process ends without the
    interpreter's teardown: the SDK's Rust threads can outlive the event loop and abort a
    finalising interpreter (temporalio/sdk-python#300), which turned a finished `haven temporal
    setup` into exit code -6. Exit handlers still run (logs and spans are flushed), and everything
    haven owns is closed before `main` returns."""
    code = main()
    if _temporal_bridge_started:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
