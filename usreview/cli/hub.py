"""``usreview hub``: start the hub and administer it (owned by :mod:`usreview.hub`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from usreview.cli.spec import Arg, Command, arg, count, grace, one_of, port

if TYPE_CHECKING:
    from usreview.hub.state import HubState
    from usreview.store import Archive
    from usreview.store.jobs import JobRecord


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
        site_port=args.site_port,
    )
    return 0


def _cmd_hub_add_user(args: argparse.Namespace) -> int:
    from usreview.hub.commands import add_user

    state = _state_dir(args)
    person = add_user(state, args.name, args.role, args.sites)
    if person.new_state:
        print(f"created a new hub state in {state.absolute()}; if you meant an existing hub, "
              "remove it and give that hub's --state (or set $USREVIEW_STATE)",
              file=sys.stderr)  # fmt: skip
    print(f"password for {person.name} ({person.role}), shown once: {person.password}")
    print(person.note, file=sys.stderr)
    return 0


_HUB_ADD_USER = Command(
    "add-user",
    help="register a person; print their generated password once",
    handler=_cmd_hub_add_user,
    description="Register NAME with a role (its group: reviewers, trainees, scientists, "
    "admins) and print a generated password once; only its scrypt hash is kept. May come "
    "before the hub's first start: a missing or empty --state becomes a new hub's (said on "
    "stderr); a folder that holds anything else is refused. Audited.",
    args=(
        arg("name", metavar="NAME", help="lowercase letters, digits, '_', '-'"),
        arg(
            "--role",
            required=True,
            choices=["reviewer", "trainee", "scientist", "admin"],
            help="reviewers read and report on studies; trainees read teaching cases; "
            "scientists read the de-identified case library; admins administer the hub",
        ),
        arg(
            "--sites",
            type=_site_list,
            metavar="A,B",
            help="a reviewer reads only these sites' studies (default: every site)",
        ),
        _state(),
    ),
)


def _cmd_hub_remove_user(args: argparse.Namespace) -> int:
    from usreview.hub.commands import remove_user

    print(remove_user(_state_dir(args), args.name, delete_home=args.delete_home).note)
    return 0


_HUB_REMOVE_USER = Command(
    "remove-user",
    help="offboard a person: no more logins, their API tokens and server end",
    handler=_cmd_hub_remove_user,
    description="Remove person NAME: their password stops working at once; with the hub "
    "running, it stops their server and deletes their API tokens; with it stopped, they are "
    "deleted from its database with their tokens. A hub that runs but does not answer yet "
    "(starting) is refused, nothing changed: run it again. Their reports and audit lines "
    "stay. Their home (STATE/users/NAME, their notebooks) stays unless --delete-home, which "
    "also deletes the home a person removed before left behind. Audited.",
    args=(
        arg("name", metavar="NAME", help="a registered person (not a site: see site-token)"),
        arg(
            "--delete-home",
            action="store_true",
            help="delete their home once their server has stopped",
        ),
        _state(),
    ),
)


def _cmd_hub_reset_password(args: argparse.Namespace) -> int:
    from usreview.hub.commands import reset_password

    password = reset_password(_state_dir(args), args.name)
    print(f"new password for {args.name}, shown once: {password}")
    print("the old password no longer works", file=sys.stderr)
    return 0


_HUB_RESET_PASSWORD = Command(
    "reset-password",
    help="give a person a new generated password; print it once",
    handler=_cmd_hub_reset_password,
    description="Generate a new password for person NAME and print it once; only its "
    "scrypt hash is kept and the old password stops working at once (hub running or "
    "stopped). Sessions already open and API tokens are unchanged (remove-user ends "
    "them). Audited.",
    args=(arg("name", metavar="NAME", help="a registered person"), _state()),
)


def _cmd_hub_reviewer_sites(args: argparse.Namespace) -> int:
    from usreview.hub.accounts import Accounts
    from usreview.hub.commands import reviewer_sites
    from usreview.hub.state import HubState

    state = _state_dir(args)
    sites = reviewer_sites(state, args.name, args.sites, every=args.all)
    print(f"{args.name} reads {'every site' if sites is None else ', '.join(sorted(sites))}")
    unknown = sorted((sites or set()) - set(Accounts(HubState(state).accounts).sites()))
    if unknown:  # allowed (a site may be added later), but a typo would show nothing
        print(
            f"note: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a registered "
            "site (yet): nothing of it shows until 'usreview hub add-site' registers it",
            file=sys.stderr,
        )
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
    if site.hub_url:
        print(f"the site's hub.url: {site.hub_url}")
    sys.stdout.write(site.hub_public_key_text)
    return 0


_HUB_ADD_SITE = Command(
    "add-site",
    help="register a site and its public key; print its API token once",
    handler=_cmd_hub_add_site,
    description="Register NAME in group 'sites' with its envelope public key (copied "
    "into the state directory); print its API token, which reaches only the usreview "
    "service, and the hub's public key. Registering needs a running hub (it issues the "
    "token); --rotate works with the hub running or stopped. Audited.",
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
            type=grace,
            metavar="DURATION",
            help="with --rotate: how long the old key still verifies uploads (default "
            "7d; 0 refuses it at once, for a compromised key)",
        ),
        _state(),
    ),
)


def _cmd_hub_sites(args: argparse.Namespace) -> int:
    from usreview.hub.commands import list_sites

    for site in list_sites(_state_dir(args)):
        last = "never" if site.last_received is None else _iso(site.last_received)
        print(
            f"{site.name}\t{site.key_id[:16]}\t{_iso(site.registered)}\t{site.instances}\t"
            f"{site.studies}\t{last}\t{site.open_conflicts}"
        )
    return 0


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


_HUB_SITES = Command(
    "sites",
    help="list the registered sites with what the hub holds of each",
    handler=_cmd_hub_sites,
    description="One line per registered site (tab-separated): name, current key id, "
    "registered, instances stored, studies, last upload ('never'), open conflicts. "
    "Audited. Works with the hub running or stopped.",
    args=(_state(),),
)


def _cmd_hub_site_token(args: argparse.Namespace) -> int:
    from usreview.hub.commands import site_token

    renewed = site_token(_state_dir(args), args.name, revoke_only=args.revoke_only)
    print(f"revoked {renewed.revoked} API token(s) of site {renewed.name}")
    if renewed.token is not None:
        print(f"new API token for site {renewed.name}, shown once: {renewed.token}")
        print("write it into the site's token file (usreview site config: hub.token_file)",
              file=sys.stderr)  # fmt: skip
    return 0


_HUB_SITE_TOKEN = Command(
    "site-token",
    help="revoke a site's API tokens and print a new one once (a leaked token)",
    handler=_cmd_hub_site_token,
    description="Revoke every API token of site NAME, then print a new one once; "
    "--revoke-only issues none (a site withdrawn). The service refuses the old tokens "
    "within 5 s. Its keys are unchanged (add-site --rotate replaces them). Audited. "
    "Needs a running hub.",
    args=(
        arg("name", metavar="NAME", help="a registered site"),
        arg("--revoke-only", action="store_true", help="revoke without issuing a new token"),
        _state(),
    ),
)


def _cmd_hub_audit(args: argparse.Namespace) -> int:
    from usreview.errors import InputError
    from usreview.hub.audit import anchor_of, rotate, tail, verify
    from usreview.hub.errors import AuditError
    from usreview.hub.state import existing_state

    if not (args.tail or args.verify or args.rotate):
        raise InputError("give --verify, --tail N, --rotate, or several")
    if args.against is not None and not args.verify:
        raise InputError("--against is checked by --verify: give both")
    state = existing_state(_state_dir(args))
    if not state.audit_log.exists():
        raise AuditError(f"no audit log yet in {state.root}")
    if args.tail:
        # As the bytes are: a damaged log is when one looks at it. Read from its end.
        last = tail(state.audit_log, args.tail)
        sys.stdout.writelines(line.decode("utf-8", "backslashreplace") + "\n" for line in last)
    if args.verify:
        copy = args.against
        if copy is not None and copy.is_dir():  # a backup: its audit log
            copy = copy / state.audit_log.name
        anchor = None if copy is None else anchor_of(copy)
        shown = sys.stderr.isatty()

        def progress(done: int, files: int, lines: int) -> None:
            if shown and files > 1:  # segments: the walk may take minutes
                print(f"\r{done}/{files} files, {lines} lines hold", end="", file=sys.stderr)

        report = verify(
            state.audit_log, state.audit_key.read_bytes(), anchor=anchor, progress=progress
        )
        if shown and report.files > 1:
            print(file=sys.stderr)
        if not report.ok:
            where = "" if report.file in (None, state.audit_log) else f" (in {report.file})"
            raise AuditError(
                f"audit log {state.audit_log} does not verify at line {report.first_bad_line}"
                f"{where}: {report.reason} ({report.lines} lines before it hold)"
            )
        extends = "" if anchor is None else f", extends {copy} (its {anchor[0]} lines)"
        segments = f" in {report.files} files" if report.files > 1 else ""
        print(f"audit log {state.audit_log}: {report.lines} lines{segments}, chain intact{extends}")
    if args.rotate:
        segment = rotate(state.audit_log, state.audit_key.read_bytes(), "usreview hub audit")
        if segment is None:
            print(f"audit log {state.audit_log}: no lines yet, nothing to rotate")
        else:
            print(f"audit log: closed as {segment}; {state.audit_log} goes on")
    return 0


_HUB_AUDIT = Command(
    "audit",
    help="check or show the hash-chained audit log",
    handler=_cmd_hub_audit,
    description="--verify walks the whole audit log and checks its keyed hash chain: "
    "exit status 0 when intact, 1 naming the first altered, removed, inserted or "
    "reordered line. The chain cannot show lines cut from its end: --against COPY also "
    "checks that the log still holds the last line of an earlier copy (a backup folder or "
    "its audit.log). --tail N prints the last N lines (JSON). --rotate closes the current "
    "file as a read-only segment in STATE/audit/ and goes on in a new one, with the hub "
    "running or not (the service does so by itself past audit_segment_bytes); --verify "
    "walks the segments and the current file as one chain.",
    args=(
        arg("--verify", action="store_true", help="check the whole chain"),
        arg("--rotate", action="store_true", help="close the current file as a segment"),
        arg(
            "--against",
            type=Path,
            default=None,
            metavar="COPY",
            help="an earlier copy (a 'hub backup' folder or an audit.log) the log must extend",
        ),
        arg("--tail", type=count, default=0, metavar="N", help="print the last N lines"),
        _state(),
    ),
)


def _cmd_hub_rotate_key(args: argparse.Namespace) -> int:
    from usreview.hub.commands import rotate_hub_key

    rotated = rotate_hub_key(_state_dir(args), revoke=args.revoke)
    print(f"the hub's key is now {rotated.key_id[:16]} ({rotated.public_key})")
    print(
        f"the replaced key {rotated.replaced_key_id[:16]} still opens what was sealed to it "
        f"({rotated.earlier_keys} earlier key(s) kept in hub-keys/)"
    )
    if args.revoke:
        print(
            f"revoked: the sites stop trusting {rotated.revoked} earlier key(s) once they "
            "follow the new one; results signed by them are sealed again when fetched"
        )
    print(
        "a running hub signs with it from its next request; sites adopt it by themselves "
        "(the step is signed by the old key)"
    )
    return 0


_HUB_ROTATE_KEY = Command(
    "rotate-key",
    help="give the hub a new envelope key; sites adopt it by themselves",
    handler=_cmd_hub_rotate_key,
    description="Make a new hub key (hub.key, hub.pub), the hub running or not, and sign "
    "the step from the current one with both. The replaced key is kept in STATE/hub-keys/: "
    "it opens the archive's envelopes and the uploads sites sealed to it before they "
    "heard of the new one. A running hub signs receipts and results with the new key "
    "from its next request (the processing worker opens with it from its next job); a "
    "site that meets it asks the hub for the signed steps and follows them from the key "
    "it pinned (no new hub.pub to hand over). --revoke, for a key believed stolen: the "
    "sites then stop trusting every earlier hub key (receipts and results signed by one "
    "are refused, a rival chain from one is not followed), and the hub seals again, with "
    "the new key, each result signed by one when it is fetched. One rotation at a time, "
    "and not during a backup. Audited.",
    args=(
        arg(
            "--revoke",
            action="store_true",
            help="the current key may be stolen: sites stop trusting every earlier key",
        ),
        _state(),
    ),
)


def _cmd_hub_next_certificate(args: argparse.Namespace) -> int:
    from usreview.hub.commands import next_certificate

    if (args.certificate is None) == (not args.clear):
        from usreview.errors import InputError

        raise InputError("give the next certificate's PEM file, or --clear")
    announced = next_certificate(_state_dir(args), None if args.clear else args.certificate)
    if announced is None:
        print("no next certificate is announced to the sites")
    else:
        print(f"announced to the sites as the hub's next certificate: {announced}")
        print("sites following results trust it within hours ('site status' shows it); "
              "then start the hub with it (--tls-cert, --tls-key)")  # fmt: skip
    return 0


_HUB_NEXT_CERTIFICATE = Command(
    "next-certificate",
    help="announce the TLS certificate the hub serves next; sites trust it ahead",
    handler=_cmd_hub_next_certificate,
    description="Copy CERT (PEM) to STATE/tls-next.crt: the hub announces it to the sites "
    "in GET hub-keys, signed with its envelope key, and the sites that follow results "
    "fetch it within hours and trust it beside the certificate they pinned. Then switch "
    "the hub to it (--tls-cert, --tls-key) without handing a file to every site. For a "
    "pinned certificate from elsewhere: the hub announces its own self-signed successor a "
    "month ahead by itself. --clear withdraws it. Hub running or not; audited.",
    args=(
        arg("certificate", type=Path, nargs="?", metavar="CERT", help="the next certificate"),
        arg("--clear", action="store_true", help="withdraw the announced certificate"),
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
            "--task-timeout",
            type=float,
            default=600.0,
            metavar="S",
            help="seconds one instance's processing may take; past it the job fails "
            "without retries and the processes are restarted (default 600)",
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
    from usreview.hub.api.settings import open_archive
    from usreview.hub.commands import audit_admin
    from usreview.hub.state import existing_state
    from usreview.store.jobs import JobStatus

    state = existing_state(_state_dir(args))
    with open_archive(state.root) as archive:
        if args.backfill:
            made = archive.jobs.backfill()
            audit_admin(state, "usreview hub jobs --backfill", "jobs", "backfilled",
                        {"queued": made})  # fmt: skip
            print(f"{made} instance(s) without a processing job queued")
            return 0
        if args.retry is not None:  # NotFoundError / InvalidTransitionError: a sentence, 1
            actor = "usreview hub jobs --retry"
            job = archive.jobs.retry(args.retry, actor=actor)
            _audit_job(state, actor, job, "retried")
            print(f"job {job.id} ({job.sop_instance_uid}) is pending again")
            return 0
        if args.reprocess is not None:  # new results will supersede the older ones
            actor = "usreview hub jobs --reprocess"
            job = archive.jobs.reprocess(args.reprocess, actor=actor)
            _audit_job(state, actor, job, "reprocessed")
            print(f"job {job.id} ({job.sop_instance_uid}) is queued again")
            return 0
        if args.outdated or args.reprocess_outdated:
            return _outdated_jobs(archive, queue_again=args.reprocess_outdated, state=state)
        jobs = archive.jobs.list_jobs(status=JobStatus.FAILED if args.failed else None)
    for job in jobs:
        why = job.last_error if job.status is JobStatus.FAILED else job.note
        print(
            f"{job.id}\t{job.status.value}\t{job.attempts}\t{job.site}\t"
            f"{job.sop_instance_uid}" + (f"\t{why}" if why else "")
        )
    return 0


def _audit_job(state: HubState, actor: str, job: JobRecord, outcome: str, **detail: str) -> None:
    """One ``admin`` audit line for a job an administrator queued again."""
    from usreview.hub.commands import audit_admin

    audit_admin(state, actor, f"jobs/{job.id}", outcome,
                {"site": job.site, "sop_instance_uid": job.sop_instance_uid, **detail})  # fmt: skip


def _outdated_jobs(archive: Archive, *, queue_again: bool, state: HubState) -> int:
    """List (or queue again) the done jobs that processing would now do differently.

    A processor whose version changed, a step of the pipeline that never ran on the job's
    kind of image (a processor added since), the value check not applied (a job done
    before it, :mod:`usreview.processing.plausible`), the similar cases chosen by another
    descriptor, or none recorded for a kind compared (:mod:`usreview.processing.similarity`),
    and the study evaluation of another version, or none recorded, for a PW spectrum
    (:mod:`usreview.processing.recommendations.study`). A job done before jobs recorded
    their processors may be outdated too: it is listed (and queued again) with "processors
    not recorded". A job with an empty record (an image usreview derived) is never outdated.
    """
    from usreview.processing import default_registry, plausible, similarity
    from usreview.processing.pipeline import planned_steps
    from usreview.processing.recommendations import study as study_rule
    from usreview.store.jobs import JobStatus, outdated_processors

    registry = default_registry()
    current = {p.name: p.version for p in registry} | {
        plausible.NAME: plausible.VERSION,
        similarity.NAME: similarity.VERSION,
        study_rule.NAME: study_rule.VERSION,
    }
    steps = planned_steps(registry)
    found = []
    for job in archive.jobs.list_jobs(status=JobStatus.DONE):
        expected = [plausible.NAME] + [
            name for name, kinds in steps if any(k.value in job.kinds for k in kinds)
        ]
        if similarity.compares(job.kinds):
            expected.append(similarity.NAME)
        if any(kind.value in job.kinds for kind in study_rule.KINDS):
            expected.append(study_rule.NAME)
        if job.processors is None:
            found.append((job, "processors not recorded"))
        elif job.processors and (changed := outdated_processors(job.processors, current, expected)):
            found.append((job, ", ".join(changed)))
    if not queue_again:
        for job, why in found:
            print(f"{job.id}\t{job.site}\t{job.sop_instance_uid}\t{why}")
        return 0
    actor = "usreview hub jobs --reprocess-outdated"
    for job, why in found:
        queued = archive.jobs.reprocess(job.id, actor=actor)
        _audit_job(state, actor, queued, "reprocessed", outdated=why)
    unrecorded = sum(why == "processors not recorded" for _, why in found)
    print(
        f"{len(found)} job(s) queued again ({unrecorded} of them without a record of their "
        "processors); their new results supersede the older ones"
    )
    return 0


_HUB_JOBS = Command(
    "jobs",
    help="list the processing jobs, retry a failed one, or queue the instances without one",
    handler=_cmd_hub_jobs,
    description="One line per job: id, status, attempts, site, SOP Instance UID and, "
    "for a failed job, the reason (tab-separated). --retry ID puts a failed job back "
    "in the queue with all its attempts (its study goes back to received); --reprocess ID "
    "queues a finished job again, and its new results supersede the older ones. After an "
    "upgrade, --outdated lists the done jobs that processing would now do differently (id, "
    "site, SOP Instance UID and why: 'speckle_obnlm 1.0 -> 1.1' for an older version, "
    "'NAME none -> 1.0' for a processor added since or the value check 'value_ranges' not "
    "yet applied; 'similarity 1.0 -> 2.0' for similar cases chosen by an older descriptor "
    "and 'study_evaluation 1.2 -> 1.3' for a spectrum whose study an older study rule "
    "evaluated, 'none' where the job did not record them; jobs done before versions were "
    "recorded say 'processors not recorded'), "
    "and --reprocess-outdated queues them all again. Each change is audited.",
    args=(
        one_of(
            arg("--failed", action="store_true", help="only the failed jobs"),
            arg(
                "--outdated",
                action="store_true",
                help="only the done jobs made by an older version of a registered processor",
            ),
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
            arg(
                "--reprocess-outdated",
                action="store_true",
                help="queue again every job that --outdated lists",
            ),
        ),
        _state(),
    ),
)


def _cmd_hub_conflicts(args: argparse.Namespace) -> int:
    from usreview.errors import InputError
    from usreview.hub import conflicts

    state = _state_dir(args)
    if args.to is not None and args.export is None:
        raise InputError("--to goes with --export ID")
    if args.export is not None:
        exported = conflicts.export_conflict(state, args.export, args.to or Path("."))
        print(f"conflict {args.export} ({exported.conflict.site}): {exported.kept}")
        if exported.stored is not None:
            print(f"stored under {exported.conflict.sop_instance_uid}: {exported.stored}")
        else:
            print(f"nothing is stored under {exported.conflict.sop_instance_uid}")
        return 0
    if args.resolve is not None:
        resolved = conflicts.resolve_conflict(state, args.resolve, args.note or "")
        print(f"conflict {resolved.id} resolved: {resolved.resolution}")
        return 0
    if args.note is not None:
        raise InputError("--note goes with --resolve ID")
    for c in conflicts.list_conflicts(state, every=args.all):
        received = c.received_at.isoformat(timespec="seconds")
        print(
            f"{c.id}\t{received}\t{c.site}\t{c.sop_instance_uid}\t{c.reason}"
            + (f"\tresolved: {c.resolution}" if c.resolved_at is not None else "")
        )
    return 0


_HUB_CONFLICTS = Command(
    "conflicts",
    help="list the uploads kept aside as conflicts, export one to compare, resolve it",
    handler=_cmd_hub_conflicts,
    description="A site that sends other content under a stored SOP Instance UID (or a "
    "UID another site or study holds) is answered 409 and its envelope is kept aside, "
    "never overwriting. One line per unresolved conflict: id, received, site, SOP "
    "Instance UID, reason (tab-separated). --export ID writes the kept instance to "
    "DIR/conflict-ID.dcm and the one stored under its UID, if any, to DIR/stored-ID.dcm; "
    "--resolve ID --note TEXT records the decision (the envelope stays kept). Audited.",
    args=(
        one_of(
            arg("--all", action="store_true", help="list the resolved conflicts too"),
            arg("--export", type=int, metavar="ID", help="write conflict ID's DICOM files"),
            arg("--resolve", type=int, metavar="ID", help="mark conflict ID resolved"),
        ),
        arg(
            "--to",
            type=Path,
            default=None,
            metavar="DIR",
            help="with --export: the folder to write into (default: the current folder)",
        ),
        arg("--note", metavar="TEXT", help="with --resolve: what was decided"),
        _state(),
    ),
)


def _cmd_hub_orphans(args: argparse.Namespace) -> int:
    from usreview.hub.errors import HubError
    from usreview.hub.orphans import Orphan, list_orphans, reingest_orphans

    state = _state_dir(args)
    if not args.reingest:
        for o in list_orphans(state):
            print(f"{o.key}\t{o.size}\t{o.site or '-'}\t{o.sop_instance_uid or '-'}"
                  + (f"\t{o.reason}" if o.reason else ""))  # fmt: skip
        return 0

    def show(o: Orphan) -> None:
        said = {
            "stored": "stored",
            "duplicate": "already stored with the same content",
            "conflict": f"kept aside as conflict {o.conflict_id} ({o.reason})",
        }.get(o.outcome, f"stays held: {o.reason}")
        uid, site = o.sop_instance_uid or "-", o.site or "-"
        print(f"{o.key}: {o.outcome}: {uid} from {site}, {said}", flush=True)

    done = reingest_orphans(state, progress=show)
    count = {o: sum(x.outcome == o for x in done) for o in ("stored", "duplicate", "conflict")}
    kept = len(done) - sum(count.values())
    print(
        f"{len(done)} orphan envelope(s): {count['stored']} stored, {count['duplicate']} "
        f"already stored, {count['conflict']} kept aside as conflicts, {kept} still held"
    )
    if kept:
        raise HubError(
            f"{kept} orphan envelope(s) could not be ingested again and stay held: see why "
            "above, fix it and run this again"
        )
    return 0


_HUB_ORPHANS = Command(
    "orphans",
    help="list the envelopes no index row names (held in orphans/), or ingest them again",
    handler=_cmd_hub_orphans,
    description="The service's start moves each archive object that no index row names "
    "(an index restored older than the objects) to STATE/archive/orphans/, never deleting "
    "it: the sites may hold receipts for them. One line per held envelope (tab-separated): "
    "key, size, the site whose key signed it and its SOP Instance UID, or '-' and why it "
    "does not open or parse. --reingest puts each one through the upload's ingest: stored, "
    "already stored with the same content, or kept aside as a conflict ('hub conflicts'), "
    "then removed from orphans/; one that fails stays held and is named with its reason "
    "(exit status 1). Audited. Works with the hub running or stopped.",
    args=(
        arg(
            "--reingest",
            action="store_true",
            help="store each held envelope as its site's upload, then remove it from orphans/",
        ),
        _state(),
    ),
)


#: The options of running the hub (``usreview hub`` without an action).
_RUN_OPTIONS = (
    arg(
        "--ip",
        default=None,
        metavar="IP",
        help="public address (default: $USREVIEW_HUB_IP or 127.0.0.1)",
    ),
    arg(
        "--port",
        type=port,
        default=None,
        metavar="N",
        help="public port (default: $USREVIEW_HUB_PORT or 8000)",
    ),
    arg("--tls-cert", type=Path, metavar="FILE", help="certificate (PEM) to serve"),
    arg("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)"),
    arg("--no-tls", action="store_true", help="serve plain HTTP (loopback addresses only)"),
    arg(
        "--site-port",
        type=port,
        default=None,
        metavar="N",
        help="also serve the sites' API on IP:N, TLS with the same certificate, for "
        "sites only and without the proxy (10-20%% more uploads per second when "
        "many sites send at once); sites then use hub.url https://IP:N (default: "
        "$USREVIEW_HUB_SITE_PORT, else none)",
    ),
)


def _refusing_run_options(action: Command) -> Command:
    """``action`` refusing the options of running the hub, which it would ignore."""
    handler = action.handler
    assert handler is not None

    def refuse_then_run(args: argparse.Namespace) -> int:
        from usreview.errors import InputError

        given = [
            option.flags[0]
            for option in _RUN_OPTIONS
            if getattr(args, option.flags[0].lstrip("-").replace("-", "_")) not in (None, False)
        ]
        if len(given) == 1:
            raise InputError(
                f"{given[0]} is an option of running the hub, not of 'hub {action.name}': drop it"
            )
        if given:
            raise InputError(
                f"{', '.join(given[:-1])} and {given[-1]} are options of running the hub, "
                f"not of 'hub {action.name}': drop them"
            )
        return handler(args)

    return dataclasses.replace(action, handler=refuse_then_run)


def _cmd_hub_backup(args: argparse.Namespace) -> int:
    from usreview.hub.backup import backup_state
    from usreview.hub.commands import audit_admin
    from usreview.hub.state import existing_state

    state = existing_state(_state_dir(args))
    # Before copying, so that the backup's own audit log holds the line.
    audit_admin(state, "usreview hub backup", "state", "backup", {"destination": str(args.dest)})
    shown = sys.stderr.isatty()

    def progress(done: int, total: int, copied: int) -> None:
        if shown and (done == total or done % 100 == 0):
            print(f"\r{done}/{total} files, {copied / 1e6:.1f} MB", end="", file=sys.stderr)

    report = backup_state(state.root, args.dest, progress=progress)
    if shown:
        print(file=sys.stderr)
    print(
        f"backed up {state.root} to {report.destination}: {report.files} files "
        f"({len(report.databases)} SQLite databases), {report.bytes / 1e6:.1f} MB"
    )
    for name in report.vanished:
        print(f"removed while copying (not in the backup): {name}", file=sys.stderr)
    for sentence in report.not_copied:
        print(f"NOT in the backup: {sentence}", file=sys.stderr)
    return 0


_HUB_BACKUP = Command(
    "backup",
    help="copy the hub's state consistently, running or not",
    handler=_cmd_hub_backup,
    description="Copy the state directory to the new folder DEST (mode 0700): the SQLite "
    "databases with SQLite's online backup API, then the files. Works with the hub "
    "running. An archive index in PostgreSQL is not copied: dump it with pg_dump first. "
    "Audited.",
    args=(arg("dest", type=Path, metavar="DEST", help="a new folder outside the state"), _state()),
)


_HUB = Command(
    "hub",
    help="run the JupyterHub of the hub, and add its users and sites",
    handler=_cmd_hub,
    description="Without ACTION: run JupyterHub with its proxy and the usreview service "
    "until interrupted. Everything it needs (keys, secrets, databases, a self-signed "
    "certificate) is generated into the state directory on first start. The public "
    "endpoint serves HTTPS; plain HTTP is refused beyond loopback. --ip, --port, "
    "--tls-cert, --tls-key, --no-tls and --site-port are checked before anything starts, "
    "and refused with an ACTION.",
    args=(_state(action=False), *_RUN_OPTIONS),
    actions=tuple(
        _refusing_run_options(action)
        for action in (
            _HUB_ADD_USER,
            _HUB_REMOVE_USER,
            _HUB_RESET_PASSWORD,
            _HUB_REVIEWER_SITES,
            _HUB_ADD_SITE,
            _HUB_SITES,
            _HUB_SITE_TOKEN,
            _HUB_ROTATE_KEY,
            _HUB_NEXT_CERTIFICATE,
            _HUB_AUDIT,
            _HUB_BACKUP,
            _HUB_WORKER,
            _HUB_JOBS,
            _HUB_CONFLICTS,
            _HUB_ORPHANS,
        )
    ),
)


COMMANDS = (_HUB,)
