"""The ``usreview`` command line.

Each subcommand is a small function that parses nothing itself: argparse does the
parsing (each command is declared beside its function as a
:class:`~usreview.cli_spec.Command`), the package does the work, and :func:`main` turns every
:class:`~usreview.errors.UsreviewError` into one line on stderr and a non-zero
exit status (2 for bad input or usage, 1 for anything else), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from usreview import __version__
from usreview.cli_spec import Arg, Command, Handler, add_command, arg, one_of
from usreview.errors import InputError, SimulationError, UsreviewError

# --- arguments several commands share ----------------------------------------------


def _paths() -> Arg:
    return arg("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")


def _json(text: str) -> Arg:
    return arg("--json", action="store_true", help=text)


# --- inspect -----------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from usreview.dicom.inspect import format_summary, summarize
    from usreview.dicom.reader import iter_dicom_paths

    status = 0
    summaries = []
    for path in iter_dicom_paths(args.paths):
        try:
            summaries.append(summarize(path))
        except InputError as exc:
            _error(f"{path}: {exc}")
            status = 2
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for summary in summaries:
            sys.stdout.write(format_summary(summary))
    return status


_INSPECT = Command(
    "inspect",
    help="describe ultrasound DICOM files: SOP class, syntax, frames, kinds, regions",
    handler=_cmd_inspect,
    description="Print what usreview reads from each ultrasound instance. Folders are "
    "searched recursively. Unreadable files are reported on stderr, one line each, and "
    "make the exit status 2.",
    args=(_paths(), _json("one JSON array (keys: see README)")),
)


# --- simulate ----------------------------------------------------------------------
# (owned by usreview.simulate)

_SIMULATE_KINDS = "bmode, cine, mmode, pw, cw, color, volume"


def _cmd_simulate(args: argparse.Namespace) -> int:
    from usreview.simulate import describe_kind, simulate

    params: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SimulationError(f"--param {item!r}: expected NAME=VALUE")
        params[name.strip()] = value
    if args.list_params:
        for name, default, text in describe_kind(args.kind):
            print(f"{name}={default}\t{text}")
        return 0
    if args.out is None:
        raise SimulationError("--out DIR is required")
    for path in simulate(args.kind, args.out, seed=args.seed, snr_db=args.snr, **params):
        print(path)
    return 0


_SIMULATE = Command(
    "simulate",
    help="write a simulated study with known answers (DICOM + NAME.truth.json)",
    handler=_cmd_simulate,
    description="Write one simulated study of KIND into DIR: each instance NAME.dcm with "
    "NAME.truth.json (the true values) beside it; print the DICOM paths. The same "
    "kind, seed and parameters write the same bytes. Invalid kinds or parameters are "
    "one line on stderr and exit status 2.",
    args=(
        arg("kind", metavar="KIND", help=f"one of: {_SIMULATE_KINDS}"),
        arg("--out", type=Path, metavar="DIR", help="output folder (created)"),
        arg("--seed", type=int, default=0, metavar="N", help="random seed (default 0)"),
        arg(
            "--snr",
            type=float,
            default=None,
            metavar="DB",
            help="signal-to-noise ratio in dB (default: 20 for pw/cw, 40 otherwise)",
        ),
        arg(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a kind-specific parameter; repeat for several (see --list-params)",
        ),
        arg(
            "--list-params",
            action="store_true",
            help="print KIND's parameters with defaults and exit",
        ),
    ),
)


# --- demo --------------------------------------------------------------------------
# (owned by usreview.demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from usreview.demo import run_demo

    return run_demo(args.out, port=args.port, exit_after_summary=args.exit)


_DEMO = Command(
    "demo",
    help="run the whole system on embedded defaults: hub, 3 sites, scanners, results",
    handler=_cmd_demo,
    description="Start the hub (state in OUT/hub), add a reviewer, enroll three simulated "
    "sites (OUT/sites/NAME) and start their gateways, send their simulated studies by "
    "C-STORE, wait for the hub's receipts, process what arrived, publish the measurements "
    "to each site and wait for them in its outbox; print a summary and keep everything "
    "running until Ctrl-C. Running it again on the same OUT reuses its state.",
    args=(
        arg("--out", type=Path, default=Path("demo"), help="output folder (default: demo)"),
        arg(
            "--port",
            type=int,
            default=None,
            metavar="N",
            help="the hub's HTTPS port (default: the last run's, else 8000 if free, else any free)",
        ),
        arg(
            "--exit",
            action="store_true",
            help="stop the hub and the gateways after the summary instead of waiting for Ctrl-C",
        ),
    ),
)


# --- keys, seal, unseal ------------------------------------------------------------
# (owned by usreview.envelope)

_PASSPHRASE_ENV = "USREVIEW_KEY_PASSPHRASE"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _passphrase(args: argparse.Namespace) -> bytes | None:
    import os

    if args.passphrase_file is not None:
        lines = args.passphrase_file.read_bytes().splitlines()
        return lines[0] if lines and lines[0] else None
    value = os.environ.get(_PASSPHRASE_ENV)
    return value.encode() if value else None


def _duration(text: str) -> int:
    unit = _DURATION_UNITS.get(text[-1:].lower()) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    if unit is None or not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (examples: 3600, 90m, 12h, 7d)"
        )
    return int(number) * unit


def _grace(text: str) -> int:
    return 0 if text.strip() == "0" else _duration(text)


def _passphrase_file() -> Arg:
    return arg(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help=f"read the key's passphrase from FILE's first line (default: ${_PASSPHRASE_ENV})",
    )


def _in_out() -> tuple[Arg, Arg]:
    return arg("input", type=Path, metavar="IN"), arg("output", type=Path, metavar="OUT")


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from usreview.envelope import generate_keys, write_key_pair

    keys = generate_keys(args.name)
    passphrase = _passphrase(args)
    key_path = write_key_pair(keys, args.dir, passphrase)
    protection = "passphrase-protected" if passphrase else "not passphrase-protected"
    print(f"key id {keys.key_id.hex()}")
    print(f"wrote {key_path} (private, mode 0600, {protection}) and {key_path.with_suffix('.pub')}")
    return 0


_KEYS_NEW = Command(
    "new",
    help="create DIR/NAME.key (private, mode 0600) and DIR/NAME.pub",
    handler=_cmd_keys_new,
    description="Create an identity: an X25519 key to receive and an Ed25519 key to "
    f"sign. The private file is passphrase-protected when ${_PASSPHRASE_ENV} or "
    "--passphrase-file gives a passphrase. Existing files are never overwritten.",
    args=(
        arg("name", metavar="NAME", help="key name: letters, digits, '.', '_', '-'"),
        arg("--dir", type=Path, default=Path("."), help="output folder (default: .)"),
        _passphrase_file(),
    ),
)


def _cmd_keys_trust(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, KeyState, load_public_keys

    ring = KeyRing.load(args.keyring) if args.keyring.exists() else KeyRing()
    key = load_public_keys(args.pub)
    ring.add(key, KeyState(args.state))
    ring.save(args.keyring)
    print(f"{args.keyring}: {key.name} {key.key_id.hex()} {args.state}")
    return 0


_KEYS_TRUST = Command(
    "trust",
    help="add a public key to a key ring file, or change its state",
    handler=_cmd_keys_trust,
    description="Active keys seal and open; retired keys only open; revoked keys are refused.",
    args=(
        arg("pub", type=Path, metavar="PUB", help="a .pub file"),
        arg("--keyring", type=Path, required=True, metavar="FILE", help="key ring (JSON)"),
        arg("--state", choices=["active", "retired", "revoked"], default="active"),
    ),
)


_KEYS = Command(
    "keys", help="create identity keys and manage a key ring", actions=(_KEYS_NEW, _KEYS_TRUST)
)


def _cmd_seal(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, load_private_keys, load_public_keys, seal_file

    sender = load_private_keys(args.key, _passphrase(args))
    recipients = [load_public_keys(path) for path in args.to]
    try:
        info = seal_file(
            args.input,
            args.output,
            sender=sender,
            recipients=recipients,
            keyring=KeyRing.from_files(args.keyring, ()) if args.keyring else None,
            valid_for=args.valid_for,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    print(
        f"sealed message {info.message_id.hex()} for {len(recipients)} recipient(s), "
        f"valid until {info.expires}"
    )
    return 0


_SEAL = Command(
    "seal",
    help="encrypt a file for one or more recipients and sign it",
    handler=_cmd_seal,
    description="Seal IN into the new file OUT (written atomically, never overwritten).",
    args=(
        arg("--key", type=Path, required=True, metavar="SENDER.key", help="your private key"),
        arg(
            "--to",
            type=Path,
            action="append",
            required=True,
            metavar="RECIPIENT.pub",
            help="repeatable",
        ),
        arg(
            "--keyring",
            type=Path,
            metavar="FILE",
            help="refuse recipients it marks retired or revoked",
        ),
        arg(
            "--valid-for",
            type=_duration,
            default=7 * 86400,
            metavar="DURATION",
            help="validity window, e.g. 3600, 90m, 12h, 7d (default: 7d, at most 90d)",
        ),
        _passphrase_file(),
        *_in_out(),
    ),
)


def _cmd_unseal(args: argparse.Namespace) -> int:
    from usreview.envelope import KeyRing, ReplayCache, load_private_keys, unseal_file

    if args.keyring is None and not args.trust:
        raise InputError(
            "unseal needs the sender's public key: --trust SENDER.pub or --keyring FILE"
        )
    recipient = load_private_keys(args.key, _passphrase(args))
    ring = KeyRing.from_files(args.keyring, args.trust or ())
    cache = ReplayCache(args.replay_cache) if args.replay_cache is not None else None
    info = unseal_file(
        args.input, args.output, recipient=recipient, keyring=ring, replay_cache=cache
    )
    sender = ring.get(info.sender_id)
    name = sender.public.name if sender is not None else "?"
    print(f"opened message {info.message_id.hex()} from {name} ({info.sender_id.hex()[:16]})")
    return 0


_UNSEAL = Command(
    "unseal",
    help="verify and decrypt an envelope",
    handler=_cmd_unseal,
    description="Open IN into the new file OUT. OUT appears only when the whole envelope "
    "verifies; on any failure one line names the cause and no OUT is left behind.",
    args=(
        arg("--key", type=Path, required=True, metavar="RECIPIENT.key", help="your private key"),
        arg(
            "--trust",
            type=Path,
            action="append",
            metavar="SENDER.pub",
            help="a trusted sender's public key (repeatable)",
        ),
        arg(
            "--keyring",
            type=Path,
            metavar="FILE",
            help="trusted keys with states (see: keys trust)",
        ),
        arg(
            "--replay-cache",
            type=Path,
            metavar="FILE",
            help="SQLite file of opened message ids; refuses an envelope opened before",
        ),
        _passphrase_file(),
        *_in_out(),
    ),
)


# --- hub ---------------------------------------------------------------------------
# (owned by usreview.hub)


def _state_dir(args: argparse.Namespace) -> Path:
    from usreview.hub.state import state_from_env

    return args.state if args.state is not None else state_from_env()


def _state(*, action: bool = True) -> Arg:
    # An action's own --state must not reset one given before the action's name.
    return arg(
        "--state",
        type=Path,
        default=argparse.SUPPRESS if action else None,
        metavar="DIR",
        help="the hub's state directory (default: $USREVIEW_STATE or ./state)",
    )


def _site_list(text: str) -> list[str]:
    sites = [name.strip() for name in text.split(",") if name.strip()]
    if not sites:
        raise argparse.ArgumentTypeError("give site names separated by commas")
    return sites


def _cmd_hub(args: argparse.Namespace) -> int:
    from usreview.hub.commands import run_hub

    run_hub(
        _state_dir(args),
        args.ip,
        args.port,
        tls=not args.no_tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    return 0


def _cmd_hub_add_user(args: argparse.Namespace) -> int:
    from usreview.hub.commands import add_user

    person = add_user(_state_dir(args), args.name, args.role, args.sites)
    print(f"password for {person.name} ({person.role}), shown once: {person.password}")
    print(person.note, file=sys.stderr)
    return 0


_HUB_ADD_USER = Command(
    "add-user",
    help="register a person; print their generated password once",
    handler=_cmd_hub_add_user,
    description="Register NAME with a role (its group: reviewers, trainees, scientists, "
    "admins) and print a generated password once; only its scrypt hash is kept.",
    args=(
        arg("name", metavar="NAME", help="lowercase letters, digits, '_', '-'"),
        arg("--role", required=True, choices=["reviewer", "trainee", "scientist", "admin"]),
        arg(
            "--sites",
            type=_site_list,
            metavar="A,B",
            help="a reviewer reads only these sites' studies (default: every site)",
        ),
        _state(),
    ),
)


def _cmd_hub_reviewer_sites(args: argparse.Namespace) -> int:
    from usreview.hub.commands import reviewer_sites

    sites = reviewer_sites(_state_dir(args), args.name, args.sites, every=args.all)
    print(f"{args.name} reads {'every site' if sites is None else ', '.join(sorted(sites))}")
    return 0


_HUB_REVIEWER_SITES = Command(
    "reviewer-sites",
    help="restrict a reviewer to some sites, or show their sites",
    handler=_cmd_hub_reviewer_sites,
    description="Reviewers read every site's studies unless restricted: --sites A,B "
    "restricts NAME to those sites, --all lifts the restriction; without either, show "
    "it. Kept in the archive and audited; the running service applies it within 5 s.",
    args=(
        arg("name", metavar="NAME", help="a registered reviewer"),
        one_of(
            arg("--sites", type=_site_list, metavar="A,B", help="only these sites"),
            arg("--all", action="store_true", help="every site (the default)"),
        ),
        _state(),
    ),
)


def _cmd_hub_add_site(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from usreview.hub.commands import add_site, rotate_site_key

    if args.rotate:
        rotated = rotate_site_key(_state_dir(args), args.name, args.public_key, args.grace)
        until = datetime.fromtimestamp(rotated.accepted_until, UTC).isoformat(timespec="seconds")
        print(f"site {rotated.name}: key {rotated.key_id[:16]} is current (results sealed to it)")
        print(f"the replaced key {rotated.replaced_key_id[:16]} verifies uploads until {until}")
        return 0
    if args.grace is not None:
        from usreview.hub.errors import AccountError

        raise AccountError("--grace goes with --rotate")
    site = add_site(_state_dir(args), args.name, args.public_key)
    print(f"API token for site {site.name}, shown once: {site.token}")
    print(f"the site's public key: {site.site_public_key}")
    print(f"the hub's public key (give it to the site): {site.hub_public_key}")
    sys.stdout.write(site.hub_public_key_text)
    return 0


_HUB_ADD_SITE = Command(
    "add-site",
    help="register a site and its public key; print its API token once",
    handler=_cmd_hub_add_site,
    description="Register NAME in group 'sites' with its envelope public key (copied "
    "into the state directory); print its API token, which reaches only the usreview "
    "service, and the hub's public key. Needs a running hub.",
    args=(
        arg("name", metavar="NAME", help="lowercase letters, digits, '_', '-'"),
        arg("--public-key", type=Path, required=True, metavar="SITE.pub", help="the site's key"),
        arg(
            "--rotate",
            action="store_true",
            help="replace the key of a registered site (its token stays); results are "
            "sealed to the new key, the old one verifies uploads for the grace period",
        ),
        arg(
            "--grace",
            type=_grace,
            metavar="DURATION",
            help="with --rotate: how long the old key still verifies uploads (default "
            "7d; 0 refuses it at once, for a compromised key)",
        ),
        _state(),
    ),
)


def _cmd_hub_audit(args: argparse.Namespace) -> int:
    from usreview.hub.audit import verify
    from usreview.hub.errors import AuditError
    from usreview.hub.state import open_state

    state = open_state(_state_dir(args))
    if not state.audit_log.exists():
        raise AuditError(f"no audit log yet in {state.root}")
    if args.tail:
        lines = state.audit_log.read_text().splitlines()[-args.tail :]
        sys.stdout.write("".join(line + "\n" for line in lines))
    if args.verify:
        report = verify(state.audit_log, state.audit_key.read_bytes())
        if not report.ok:
            raise AuditError(
                f"audit log {state.audit_log} does not verify at line {report.first_bad_line}: "
                f"{report.reason} ({report.lines} lines before it hold)"
            )
        print(f"audit log {state.audit_log}: {report.lines} lines, chain intact")
    return 0


_HUB_AUDIT = Command(
    "audit",
    help="check or show the hash-chained audit log",
    handler=_cmd_hub_audit,
    description="--verify walks the whole audit log and checks its keyed hash chain: "
    "exit status 0 when intact, 1 naming the first altered, removed, inserted or "
    "reordered line. --tail N prints the last N lines (JSON).",
    args=(
        arg("--verify", action="store_true", help="check the whole chain"),
        arg("--tail", type=int, default=0, metavar="N", help="print the last N lines"),
        _state(),
    ),
)


def _cmd_hub_worker(args: argparse.Namespace) -> int:
    from usreview.processing.worker import run_worker

    args.state = _state_dir(args)
    return run_worker(args)


_HUB_WORKER = Command(
    "worker",
    help="process stored instances and publish the results to their sites",
    handler=_cmd_hub_worker,
    description="Take processing jobs from the archive's queue (leases, retries), run "
    "the pipeline on local processes or a dask.distributed cluster, seal the SR and "
    "the JSON summary to the site. The hub runs one as its 'usreview-worker' service; "
    "start more (here or on other machines sharing the state) to go faster.",
    args=(
        _state(),
        arg(
            "--scheduler",
            type=str,
            default=None,
            metavar="ADDR",
            help="run on the dask.distributed scheduler at ADDR (tcp://HOST:PORT; "
            "tls://... beyond a trusted network) instead of local processes",
        ),
        arg("--processes", type=int, default=2, metavar="N", help="local processes (default 2)"),
        arg(
            "--lease",
            type=float,
            default=60.0,
            metavar="S",
            help="seconds a claimed job is held unrenewed (default 60)",
        ),
        arg(
            "--poll",
            type=float,
            default=1.0,
            metavar="S",
            help="seconds between looks at an empty queue (default 1)",
        ),
        arg(
            "--attempts",
            type=int,
            default=5,
            metavar="N",
            help="attempts before a job and its study fail (default 5)",
        ),
        arg(
            "--task",
            type=str,
            default=None,
            metavar="MODULE:FUNCTION",
            help="the function run on each instance "
            "(default: usreview.processing.execution:execute_file, the pipeline)",
        ),
    ),
)


def _cmd_hub_jobs(args: argparse.Namespace) -> int:
    from usreview.hub.api.settings import ServiceSettings
    from usreview.hub.state import open_state
    from usreview.store import Archive
    from usreview.store.jobs import JobStatus

    state = open_state(_state_dir(args))
    settings = ServiceSettings.from_state(state.root)
    with Archive.open(settings.database_url or None, state.root / "archive") as archive:
        if args.backfill:
            made = archive.jobs.backfill()
            print(f"{made} instance(s) without a processing job queued")
            return 0
        if args.retry is not None:  # NotFoundError / InvalidTransitionError: a sentence, 1
            job = archive.jobs.retry(args.retry, actor="usreview hub jobs --retry")
            print(f"job {job.id} ({job.sop_instance_uid}) is pending again")
            return 0
        if args.reprocess is not None:  # new results will supersede the older ones
            job = archive.jobs.reprocess(args.reprocess, actor="usreview hub jobs --reprocess")
            print(f"job {job.id} ({job.sop_instance_uid}) is queued again")
            return 0
        jobs = archive.jobs.list_jobs(status=JobStatus.FAILED if args.failed else None)
    for job in jobs:
        why = job.last_error if job.status is JobStatus.FAILED else job.note
        print(
            f"{job.id}\t{job.status.value}\t{job.attempts}\t{job.site}\t"
            f"{job.sop_instance_uid}" + (f"\t{why}" if why else "")
        )
    return 0


_HUB_JOBS = Command(
    "jobs",
    help="list the processing jobs, retry a failed one, or queue the instances without one",
    handler=_cmd_hub_jobs,
    description="One line per job: id, status, attempts, site, SOP Instance UID and, "
    "for a failed job, the reason (tab-separated). --retry ID puts a failed job back "
    "in the queue with all its attempts (its study goes back to received); --reprocess ID "
    "queues a finished job again, and its new results supersede the older ones.",
    args=(
        arg("--failed", action="store_true", help="only the failed jobs"),
        one_of(
            arg("--retry", type=int, metavar="ID", help="re-queue the failed job ID"),
            arg(
                "--reprocess",
                type=int,
                metavar="ID",
                help="queue the finished job ID again (processors changed): its new "
                "results supersede the older ones",
            ),
            arg(
                "--backfill",
                action="store_true",
                help="queue a job for every stored instance that has none (stored before "
                "the queue)",
            ),
        ),
        _state(),
    ),
)


_HUB = Command(
    "hub",
    help="run the JupyterHub of the hub, and add its users and sites",
    handler=_cmd_hub,
    description="Without ACTION: run JupyterHub with its proxy and the usreview service "
    "until interrupted. Everything it needs (keys, secrets, databases, a self-signed "
    "certificate) is generated into the state directory on first start. The public "
    "endpoint serves HTTPS; plain HTTP is refused beyond loopback.",
    args=(
        _state(action=False),
        arg(
            "--ip",
            default=None,
            metavar="IP",
            help="public address (default: $USREVIEW_HUB_IP or 127.0.0.1)",
        ),
        arg(
            "--port",
            type=int,
            default=None,
            metavar="N",
            help="public port (default: $USREVIEW_HUB_PORT or 8000)",
        ),
        arg("--tls-cert", type=Path, metavar="FILE", help="certificate (PEM) to serve"),
        arg("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)"),
        arg("--no-tls", action="store_true", help="serve plain HTTP (loopback addresses only)"),
    ),
    actions=(_HUB_ADD_USER, _HUB_REVIEWER_SITES, _HUB_ADD_SITE, _HUB_AUDIT, _HUB_WORKER, _HUB_JOBS),
)


# --- site --------------------------------------------------------------------------
# (owned by usreview.site)


def _config() -> Arg:
    return arg("--config", type=Path, required=True, metavar="site.toml", help="the site's file")


def _cmd_site_init(args: argparse.Namespace) -> int:
    from usreview.site import init_site
    from usreview.site.config import parse_pacs

    site = init_site(
        args.name,
        args.hub,
        args.dir,
        hub_certificate=args.hub_cert,
        hub_public_key=args.hub_key,
        token_file=args.token_file,
        ae_title=args.ae_title,
        port=args.port,
        allowed_calling_ae_titles=args.allow_ae,
        pacs=[parse_pacs(text) for text in args.pacs],
        dicom_tls_hosts=args.dicom_tls_host if args.dicom_tls or args.dicom_tls_host else None,
        encrypt_spool=args.encrypt_spool,
    )
    print(f"wrote {site.config}")
    print(f"site key id {site.key_id}")
    print(f"give this public key to the hub's administrator: {site.public_key}")
    print(
        f"  (they run: usreview hub add-site {args.name} --public-key {site.public_key.name}, "
        "and send back the token and the hub's public key)",
        file=sys.stderr,
    )
    return 0


_SITE_INIT = Command(
    "init",
    help="create a site's keys and DIR/site.toml",
    handler=_cmd_site_init,
    description="Generate the site's envelope keys (DIR/keys/NAME.key, mode 0600, "
    "passphrase-protected when $USREVIEW_KEY_PASSPHRASE is set) and write "
    "DIR/site.toml. Give DIR/keys/NAME.pub to the hub's administrator ('usreview hub "
    "add-site'); put the token they send back into the token file (chmod 600) and "
    "their hub.pub into DIR.",
    args=(
        arg("name", metavar="NAME", help="the site's name at the hub"),
        arg("--hub", required=True, metavar="URL", help="the hub's https:// URL"),
        arg("--dir", type=Path, required=True, metavar="DIR", help="site folder"),
        arg("--hub-cert", type=Path, metavar="PEM", help="the hub's TLS certificate to pin"),
        arg("--hub-key", type=Path, metavar="HUB.pub", help="the hub's public key"),
        arg(
            "--token-file",
            type=Path,
            metavar="F",
            help="where the API token is (default DIR/token)",
        ),
        arg("--ae-title", default="USREVIEW", help="the gateway's AE title"),
        arg("--port", type=int, default=11112, help="the gateway's DICOM port"),
        arg(
            "--allow-ae",
            action="append",
            default=[],
            metavar="TITLE",
            help="a scanner's calling AE title (repeatable; '*' allows any)",
        ),
        arg(
            "--pacs",
            action="append",
            default=[],
            metavar="[NAME=]AE@HOST:PORT",
            help="a PACS that receives the results (repeatable)",
        ),
        arg(
            "--dicom-tls",
            action="store_true",
            help="DICOM TLS on the gateway's port: generate DIR/dicom-tls.crt and .key "
            "(self-signed; give the .crt to the scanners to trust)",
        ),
        arg(
            "--dicom-tls-host",
            action="append",
            default=[],
            metavar="NAME",
            help="a host name or address the scanners use, named in the certificate "
            "(repeatable; implies --dicom-tls)",
        ),
        arg(
            "--encrypt-spool",
            action="store_true",
            help="encrypt the spool and its journal at rest with a key generated in "
            "DIR/keys/spool.key (AES-256-GCM)",
        ),
    ),
)


def _cmd_site_gateway(args: argparse.Namespace) -> int:
    import logging

    from usreview.site import load_config, run_gateway

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    run_gateway(load_config(args.config), announce=lambda line: print(line, flush=True))
    return 0


_SITE_GATEWAY = Command(
    "gateway",
    help="run the DICOM gateway until interrupted",
    handler=_cmd_site_gateway,
    description="Listen for scanners (DICOM C-STORE), spool every instance durably "
    "before answering, upload it sealed to the hub with retries, and deliver the hub's "
    "results into the outbox and to the PACS. Runs two processes: the DICOM receiver, "
    "and an upload process that it supervises. Stops on SIGINT or SIGTERM.",
    args=(_config(), arg("-v", "--verbose", action="store_true", help="log every event")),
)


def _cmd_site_push(args: argparse.Namespace) -> int:
    from usreview.site import NotAcknowledgedError, load_config, push_paths
    from usreview.site.progress import PushProgress

    report = push_paths(load_config(args.config), args.paths, progress=PushProgress(sys.stderr))
    print(f"{len(report.acknowledged)} acknowledged, {len(report.failed)} not acknowledged")
    if report.failed:
        raise NotAcknowledgedError({str(p): reason for p, reason in report.failed.items()})
    return 0


_SITE_PUSH = Command(
    "push",
    help="upload files or folders once",
    handler=_cmd_site_push,
    description="Seal and upload every DICOM file under PATH; progress on stderr (a bar "
    "with rate and time left on a terminal, one line per instance otherwise). Exit "
    "status 1 naming every instance the hub did not acknowledge with a verified "
    "receipt.",
    args=(_config(), _paths()),
)


def _cmd_site_pull(args: argparse.Namespace) -> int:
    from usreview.site import load_config
    from usreview.site.pull import pull_results

    report = pull_results(load_config(args.config))
    for result_id, path in report.delivered:
        print(f"result {result_id}: {path if path is not None else 'not delivered (see status)'}")
    left = report.pacs_pending
    print(
        f"{len(report.delivered)} result(s); cursor {report.cursor}; "
        f"{left} PACS delivery(ies) pending"
    )
    return 1 if left else 0


_SITE_PULL = Command(
    "pull",
    help="fetch and deliver the pending results once",
    handler=_cmd_site_pull,
    description="Deliver the results published since the last one delivered into the "
    "outbox and to the PACS. Refused while a gateway or its upload process runs (they "
    "deliver them themselves). Exit status 1 when a PACS delivery is still pending.",
    args=(_config(),),
)


def _cmd_site_rotate_key(args: argparse.Namespace) -> int:
    import time

    from usreview.site import load_config
    from usreview.site.config import rotate_site_key

    config = load_config(args.config)
    site = rotate_site_key(config, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    print(f"site key id {site.key_id}; {site.config} now uses it")
    print(f"give this public key to the hub's administrator: {site.public_key}")
    print(
        f"  (they run: usreview hub add-site {config.name} --public-key {site.public_key.name} "
        "--rotate); restart the gateway",
        file=sys.stderr,
    )
    return 0


_SITE_ROTATE_KEY = Command(
    "rotate-key",
    help="generate the site's next key pair and switch to it",
    handler=_cmd_site_rotate_key,
    description="Write a new key pair into DIR/keys/STAMP/ and point site.private_key "
    "at it (the old files stay). Restart the gateway, then give the new .pub to the "
    "hub's administrator: 'usreview hub add-site NAME --public-key NEW.pub --rotate'.",
    args=(_config(),),
)


def _cmd_site_rejected(args: argparse.Namespace) -> int:
    import time

    from usreview.site import Spool, SpoolError, load_config
    from usreview.site.atrest import load_spool_cipher
    from usreview.site.rejected import export_rejected, list_rejected

    config = load_config(args.config)
    spool = Spool(config.spool, load_spool_cipher(config) if args.export else None)
    items = list_rejected(spool)
    for item in items:
        at = item.rejected_at
        when = "?" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        size = "gone" if item.size is None else f"{item.size} B"
        print(f"{item.sop_instance_uid}\t{item.sha256[:12]}\t{size}\t{when}\t{item.reason}")
    if args.export is None:
        print(f"{len(items)} rejected instance(s)")
        return 0
    report = export_rejected(config, spool, items, args.export)
    for name, reason in sorted(report.failed.items()):
        print(f"usreview: error: {name}: {reason}", file=sys.stderr)
    print(
        f"{len(report.written)} exported to {args.export}, {len(report.already)} already "
        f"there, {len(report.failed)} failed"
    )
    if report.failed:
        raise SpoolError(f"{len(report.failed)} rejected instance(s) not exported")
    return 0


_SITE_REJECTED = Command(
    "rejected",
    help="list the instances the hub refused, and export them",
    handler=_cmd_site_rejected,
    description="List the instances in the spool's rejected/ folder with the reason "
    "recorded (no network). With --export DIR, write each as received (decrypted "
    "with folders.spool_key when the spool is encrypted, checked against its SHA-256) "
    "to DIR/UID_SHA256.dcm (mode 0600, never overwritten), each recorded in "
    "STATE/exports.log. Exit status 1 naming any that could not be exported.",
    args=(
        _config(),
        arg("--export", type=Path, metavar="DIR", help="write decrypted copies into DIR"),
    ),
)


def _cmd_site_status(args: argparse.Namespace) -> int:
    from usreview.site import format_status, load_config, read_status

    status = read_status(load_config(args.config))
    if args.json:
        json.dump(status.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(status))
    return 0


_SITE_STATUS = Command(
    "status",
    help="spool depth, last upload, last result, errors",
    handler=_cmd_site_status,
    description="Show the site's state from its folders (works with or without a "
    "running gateway; no network).",
    args=(_config(), _json("as JSON")),
)


_SITE = Command(
    "site",
    help="a site: DICOM gateway for scanners, uploads to the hub, results back",
    description="Run a site: 'init' creates its keys and site.toml; 'gateway' receives "
    "from scanners, uploads to the hub and delivers results; 'push' and 'pull' do it "
    "once without a gateway; 'status' shows spool, uploads, results and errors; "
    "'rejected' lists and exports what the hub refused.",
    actions=(
        _SITE_INIT,
        _SITE_GATEWAY,
        _SITE_PUSH,
        _SITE_PULL,
        _SITE_STATUS,
        _SITE_ROTATE_KEY,
        _SITE_REJECTED,
    ),
)


# --- analyze -----------------------------------------------------------------------
# (owned by usreview.processing)


def _cmd_processors(args: argparse.Namespace) -> int:
    from usreview.processing import default_registry

    listing = [p.describe() for p in default_registry()]
    if args.json:
        json.dump(listing, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for item in listing:
        state = "available" if item["available"] else f"unavailable: {item['reason']}"
        kinds = ", ".join(item["kinds"]) or "-"
        print(f"{item['name']}\t{item['version']}\t{kinds}\t{state}")
    return 0


_PROCESSORS = Command(
    "processors",
    help="list the registered processors: kinds, version, availability",
    handler=_cmd_processors,
    description="List built-in processors and those of the entry-point group "
    "'usreview.processors': name, version, image kinds and whether their dependencies "
    "are installed (tab-separated, or JSON).",
    args=(_json("one JSON array"),),
)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from usreview.processing import analyze_paths

    summaries = analyze_paths(args.paths, args.out)
    status = 0
    for summary in summaries:
        if "error" in summary:
            _error(f"{summary['file']}: {summary['error']}")
            status = 2
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return status
    for summary in summaries:
        if "error" in summary:
            continue
        print(f"{summary['file']}  ({', '.join(summary['kinds'])})")
        for q in summary["quantities"]:
            cycles = f"  [{q['cycles']} cycles]" if "cycles" in q else ""
            code = f"{q['scheme']} {q['code']}"
            print(f"  {q['name']} = {q['value']:g} {q['unit']}  ({code}){cycles}")
        for f in summary["findings"]:
            print(f"  finding: {f['text']}")
        for r in summary["recommendations"]:
            print(f"  recommendation: {r['text']}")
        for step in summary["processors"]:
            if step["status"] != "done":
                print(f"  {step['processor']}: {step['status']} ({step['reason']})")
        for image in summary["images"]:
            print(f"  image: {image['file']}")
    return status


_ANALYZE = Command(
    "analyze",
    help="run the processing pipeline on local files, without a hub",
    handler=_cmd_analyze,
    description="Run the default pipeline on each ultrasound file (folders are searched "
    "recursively) and print its kinds, quantities (name, code, value, UCUM unit), "
    "findings and recommendations. Recommendations are decision support for the "
    "reviewing expert. Unreadable files are reported on stderr and make the exit status 2.",
    args=(
        _paths(),
        _json("one JSON array, an object per instance"),
        arg("--out", type=Path, metavar="DIR", help="write derived images here (PNG)"),
    ),
)


# --- main --------------------------------------------------------------------------


def _error(message: str) -> None:
    sys.stderr.write(f"usreview: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``usreview`` command."""
    parser = argparse.ArgumentParser(
        prog="usreview", description="Remote assistance in diagnostic ultrasound."
    )
    parser.add_argument("--version", action="version", version=f"usreview {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (
        _INSPECT,
        _SIMULATE,
        _DEMO,
        _KEYS,
        _SEAL,
        _UNSEAL,
        _HUB,
        _SITE,
        _PROCESSORS,
        _ANALYZE,
    ):
        add_command(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except InputError as exc:
        _error(str(exc))
        return 2
    except UsreviewError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
