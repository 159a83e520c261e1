"""``usreview site``: a clinic's gateway, uploads and results (owned by :mod:`usreview.site`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from usreview.cli.spec import Arg, Command, arg, error, json_flag, one_of, paths

if TYPE_CHECKING:
    from usreview.site import SiteConfig, Spool
    from usreview.site.rejected import RejectedInstance


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
    if not args.allow_ae:
        print(
            "note: no --allow-ae, so the gateway will refuse every scanner: name their calling "
            f"AE titles in gateway.allowed_calling_ae_titles of {site.config} ('*' allows any)",
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
            help="a scanner's calling AE title (repeatable; '*' allows any); the gateway "
            "refuses every scanner until one is named",
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
    from usreview.errors import InputError
    from usreview.site import NotAcknowledgedError, PushStoppedError, load_config, push_paths
    from usreview.site.progress import PushProgress

    progress = PushProgress(sys.stderr)
    report = push_paths(load_config(args.config), args.paths, progress=progress)
    progress.end()
    refused = {str(p): why for p, why in report.failed.items()}
    bad = {str(p): why for p, why in report.unread.items()}
    left = f", {len(report.remaining)} left (the hub cannot be reached)" if report.stopped else ""
    print(
        f"{len(report.acknowledged)} acknowledged, {len(refused)} not acknowledged, "
        f"{len(bad)} not sent{left}"
    )
    if report.stopped is not None:
        if refused:
            error(str(NotAcknowledgedError(refused)))
        if bad:
            names = "; ".join(f"{path}: {why}" for path, why in sorted(bad.items()))
            error(f"{len(bad)} file(s) not sent: {names}")
        raise PushStoppedError(
            report.stopped, sent=len(report.acknowledged), remaining=len(report.remaining)
        )
    if bad:
        if refused:
            error(str(NotAcknowledgedError(refused)))
        names = "; ".join(f"{path}: {why}" for path, why in sorted(bad.items()))
        raise InputError(f"{len(bad)} file(s) not sent: {names}")
    if refused:
        raise NotAcknowledgedError(refused)
    return 0


_SITE_PUSH = Command(
    "push",
    help="upload files or folders once",
    handler=_cmd_site_push,
    description="Seal and upload every DICOM file under PATH; progress on stderr (a bar "
    "with rate and time left on a terminal, one line per instance otherwise). What the "
    "hub already holds (same UID and bytes) is not sent again. When the hub cannot be "
    "reached (3 files in a row, or 20 s of tries), stop, say how many were sent and how "
    "many remain, exit status 1: the same command resumes. Exit "
    "status 1 naming every instance the hub did not acknowledge with a verified "
    "receipt; 2 naming every file that is missing, unreadable or not DICOM (the others "
    "are still sent).",
    args=(_config(), paths()),
)


def _cmd_site_pull(args: argparse.Namespace) -> int:
    from usreview.site import load_config
    from usreview.site.pull import pull_results

    report = pull_results(
        load_config(args.config), retry_refused=args.retry_refused, cursor=args.cursor
    )
    for result_id, path in [*report.retried, *report.delivered]:
        print(f"result {result_id}: {path if path is not None else 'not delivered (see status)'}")
    left = report.pacs_pending
    retried = (
        f"{len(report.retried)} refused result(s) delivered, {report.still_refused} still refused; "
        if args.retry_refused
        else ""
    )
    print(
        f"{retried}{len(report.delivered)} result(s); cursor {report.cursor}; "
        f"{left} PACS delivery(ies) pending"
    )
    return 1 if left or report.still_refused else 0


_SITE_PULL = Command(
    "pull",
    help="fetch and deliver the pending results once",
    handler=_cmd_site_pull,
    description="Deliver the results published since the last one delivered into the "
    "outbox and to the PACS. Refused while a gateway or its upload process runs (they "
    "deliver them themselves). --retry-refused first opens again the results put aside in "
    "state/refused/ because they did not open (the hub's key or the site's keys were wrong "
    "or rotated): fix the keys, then retry. --cursor N sets the results cursor first (when "
    "state/results.cursor is damaged or missing: the error names N). Exit status 1 when a "
    "PACS delivery is still pending or a result is still refused.",
    args=(
        _config(),
        arg(
            "--retry-refused",
            action="store_true",
            help="open again the results put aside in state/refused/",
        ),
        arg(
            "--cursor",
            type=int,
            metavar="N",
            help="first set the results cursor to N: results after N are delivered, those up "
            "to N are not (after state/results.cursor was damaged or lost)",
        ),
    ),
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


def _when(timestamp: float | None) -> str:
    """A rejection note's time, local; ``?`` when missing or not a time (1e20, NaN)."""
    from usreview.site.status import local_time

    return local_time(timestamp) or "?"


def _cmd_site_rejected(args: argparse.Namespace) -> int:
    from usreview.errors import InputError
    from usreview.site import Spool, SpoolError, load_config
    from usreview.site.atrest import load_spool_cipher
    from usreview.site.rejected import export_rejected, list_rejected

    if args.all and args.requeue is None:
        raise InputError("--all goes with --requeue")
    if args.requeue is not None and not args.requeue and not args.all:
        raise InputError("--requeue needs the UIDs of the instances to requeue, or --all")
    if args.requeue and args.all:
        raise InputError("--requeue takes UIDs or --all, not both")
    config = load_config(args.config)
    spool = Spool(config.spool, load_spool_cipher(config) if args.export else None)
    items = list_rejected(spool)
    if args.requeue is not None:
        return _requeue(config, spool, items, None if args.all else args.requeue)
    for item in items:
        when = _when(item.rejected_at)
        size = "gone" if item.size is None else f"{item.size} B"
        print(f"{item.sop_instance_uid}\t{item.sha256[:12]}\t{size}\t{when}\t{item.reason}")
    if args.export is None:
        print(f"{len(items)} rejected instance(s)")
        return 0
    report = export_rejected(config, spool, items, args.export)
    for name, reason in sorted(report.failed.items()):
        said = reason if reason.startswith(name) else f"{name}: {reason}"  # named once
        print(f"usreview: error: {said}", file=sys.stderr)
    print(
        f"{len(report.written)} exported to {args.export}, {len(report.already)} already "
        f"there, {len(report.failed)} failed"
    )
    if report.failed:
        raise SpoolError(f"{len(report.failed)} rejected instance(s) not exported")
    return 0


def _requeue(
    config: SiteConfig, spool: Spool, items: list[RejectedInstance], uids: list[str] | None
) -> int:
    """``site rejected --requeue``: move the named (or all) rejected instances back."""
    from usreview.site import SpoolError
    from usreview.site.rejected import requeue_rejected

    failed: dict[str, str] = {}
    if uids is not None:
        known = {item.sop_instance_uid for item in items}
        for uid in dict.fromkeys(uids):
            if uid not in known:
                failed[uid] = "no rejected instance with this UID"
        items = [item for item in items if item.sop_instance_uid in set(uids)]
    report = requeue_rejected(config, spool, items)
    failed.update(report.failed)
    for name, reason in sorted(failed.items()):
        print(f"usreview: error: {name}: {reason}", file=sys.stderr)
    print(
        f"{len(report.requeued)} requeued for upload, {len(report.already)} already in the "
        f"spool, {len(failed)} failed"
    )
    if failed:
        raise SpoolError(f"{len(failed)} rejected instance(s) not requeued")
    return 0


_SITE_REJECTED = Command(
    "rejected",
    help="list the instances the hub refused; export them or send them again",
    handler=_cmd_site_rejected,
    description="List the instances in the spool's rejected/ folder with the reason "
    "recorded (no network). With --export DIR, write each as received (decrypted "
    "with folders.spool_key when the spool is encrypted, checked against its SHA-256) "
    "to DIR/UID_SHA256.dcm (mode 0600, never overwritten), each recorded in "
    "STATE/exports.log. Exit status 1 naming any that could not be exported. "
    "With --requeue UID... (or --requeue --all), move those instances back into the "
    "spool, where the gateway uploads them again (after the cause is fixed at the hub), "
    "each recorded in STATE/exports.log; exit status 1 naming any not requeued.",
    args=(
        _config(),
        one_of(
            arg("--export", type=Path, metavar="DIR", help="write decrypted copies into DIR"),
            arg(
                "--requeue",
                nargs="*",
                metavar="UID",
                help="move the instances with these SOP Instance UIDs back into the spool "
                "for upload",
            ),
        ),
        arg("--all", action="store_true", help="with --requeue: every rejected instance"),
    ),
)


_DURATION = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``--max-age``: a number of seconds, or with a unit: ``90s``, ``15m``, ``2h``, ``1d``."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*", text.lower())
    if found is None or float(found[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number of seconds, or 90s, 15m, 2h, 1d"
        )
    return float(found[1]) * _DURATION[found[2] or ""]


def _cmd_site_status(args: argparse.Namespace) -> int:
    from usreview import _json as strict_json
    from usreview.errors import InputError
    from usreview.site import format_status, load_config, read_status
    from usreview.site.status import (
        format_study_status,
        read_held,
        read_study_status,
        study_status_doc,
    )

    if args.check:
        if args.study is not None or args.accession is not None or args.json:
            raise InputError("--check prints one line: not with --study, --accession or --json")
        return _check(args)
    if args.max_age is not None:
        raise InputError("--max-age goes with --check")
    config = load_config(args.config)
    if args.study is not None or args.accession is not None:
        reports = read_study_status(config, study=args.study, accession=args.accession)
        held = read_held(config)
        if args.json:
            doc = study_status_doc(reports, held)
            sys.stdout.write(strict_json.dumps(doc, indent=2) + "\n")
        else:
            asked = f"study {args.study}" if args.study else f"accession {args.accession}"
            sys.stdout.write(format_study_status(reports, held, asked))
        return 0
    status = read_status(config)
    if args.json:
        sys.stdout.write(strict_json.dumps(status.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(format_status(status))
    return 0


def _check(args: argparse.Namespace) -> int:
    """``site status --check``: one line, and the Nagios exit status."""
    from usreview.errors import UsreviewError
    from usreview.site import load_config, read_status
    from usreview.site.status import CheckState, check_status

    max_age = args.max_age if args.max_age is not None else DEFAULT_MAX_AGE
    try:
        state, line = check_status(read_status(load_config(args.config)), max_age)
    except (UsreviewError, OSError) as exc:  # the check itself cannot run
        state, line = CheckState.UNKNOWN, f"UNKNOWN: {exc}"
    print(line)
    return int(state)


#: ``site status --check --max-age``'s default (seconds).
DEFAULT_MAX_AGE = 3600.0

_SITE_STATUS = Command(
    "status",
    help="spool depth, last upload, last result, errors; one study's journey; or a check",
    handler=_cmd_site_status,
    description="Show the site's state from its folders (works with or without a "
    "running gateway; no network): the gateway and its upload process (restarts, and why "
    "it last ended), the hub, spool, instances held back (why, tries, since when), "
    "uploads, results, results refused, PACS deliveries pending and failed per "
    "destination, scanners refused, recent errors (each with how often it repeated). "
    "With --study UID or --accession N, one block per study from the per-study journal "
    "(STATE/studies.jsonl, 30 days): instances received, acknowledged by the hub, waiting "
    "(and why any is held back) and rejected; results received by kind; delivered to each "
    "PACS, pending or failed. With --check, one line for monitoring and the Nagios exit "
    "status: 0 OK, 1 WARNING (instances held back or given up, a scanner refused, the "
    "upload process restarted, the results follower not starting), 2 CRITICAL (the "
    "gateway not running, its upload process restarting, the hub unreachable or an "
    "instance waiting for longer than --max-age, a scanner refused for want of space), "
    "3 UNKNOWN (site.toml unreadable).",
    args=(
        _config(),
        one_of(
            arg("--study", metavar="UID", help="one study, by its Study Instance UID"),
            arg("--accession", metavar="N", help="the studies with this accession number"),
        ),
        json_flag("as JSON"),
        arg(
            "--check",
            action="store_true",
            help="one line and exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)",
        ),
        arg(
            "--max-age",
            type=parse_duration,
            metavar="DURATION",
            help="with --check: how long an instance may wait for upload, or the hub be "
            "unreachable, before it is critical (seconds, or 90s, 15m, 2h, 1d; default 1h)",
        ),
    ),
)


def _cmd_site_pacs(args: argparse.Namespace) -> int:
    from usreview.site import load_config
    from usreview.site.deliver import PacsQueue

    config = load_config(args.config)
    queue = PacsQueue(config.state / "pacs", config.pacs, config.ae_title)
    if args.name is not None and args.name not in queue.destinations:
        from usreview.errors import InputError

        known = ", ".join(sorted(queue.destinations)) or "none"
        raise InputError(f"no PACS named {args.name!r} in {args.config} (configured: {known})")
    if not args.retry_failed:
        failed = queue.failed(args.name)
        pending = [p for p in queue.pending() if args.name in (None, p.destination)]
        for item in failed:
            print(f"{item.destination}\tresult {item.result_id}\t{item.path}\t{item.reason}")
        print(f"{len(pending)} delivery(ies) pending, {len(failed)} failed")
        return 0
    moved = queue.retry_failed(args.name)
    names = sorted({item.destination for item in moved})
    where = f" ({', '.join(names)})" if names else ""
    print(
        f"{len(moved)} failed delivery(ies) moved back into the queue{where}; the gateway "
        "sends them (without one: usreview site pull)"
    )
    return 0


_SITE_PACS = Command(
    "pacs",
    help="list the PACS deliveries set aside; move them back into the queue",
    handler=_cmd_site_pacs,
    description="List the deliveries each PACS refused for good (STATE/pacs/NAME/failed/, "
    "with the reason) and the number pending (no network). With --retry-failed, move "
    "them (of PACS NAME, or of all) back into the queue, each durably, for the gateway "
    "(or 'site pull') to send again once the PACS takes them.",
    args=(
        _config(),
        arg("name", nargs="?", metavar="NAME", help="one PACS (default: all)"),
        arg(
            "--retry-failed",
            action="store_true",
            help="move the failed deliveries back into the queue",
        ),
    ),
)


def _cmd_site_rotate_spool_key(args: argparse.Namespace) -> int:
    import time

    from usreview.site import load_config
    from usreview.site.config import rotate_spool_key

    config = load_config(args.config)
    key = rotate_spool_key(config, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    print(f"new spool key {key}; {config.path} seals with it")
    print(
        "restart the gateway; the previous key is first in folders.retired_spool_keys "
        "(remove it once nothing it sealed is left in the spool, rejected/ or the journal)",
        file=sys.stderr,
    )
    return 0


_SITE_ROTATE_SPOOL_KEY = Command(
    "rotate-spool-key",
    help="write a new spool key and seal the spool with it",
    handler=_cmd_site_rotate_spool_key,
    description="Write a new spool key (DIR/keys/spool-STAMP.key, mode 0600), point "
    "folders.spool_key at it and list the previous one first in "
    "folders.retired_spool_keys (what it sealed still opens). Restart the gateway. On a "
    "site without a spool key, this turns encryption at rest on.",
    args=(_config(),),
)


_SITE = Command(
    "site",
    help="a site: DICOM gateway for scanners, uploads to the hub, results back",
    description="Run a site: 'init' creates its keys and site.toml; 'gateway' receives "
    "from scanners, uploads to the hub and delivers results; 'push' and 'pull' do it "
    "once without a gateway; 'status' shows spool, uploads, results and errors (or one "
    "study's journey); 'pacs' lists or retries the deliveries a PACS refused; "
    "'rejected' lists, exports or requeues what the hub refused.",
    actions=(
        _SITE_INIT,
        _SITE_GATEWAY,
        _SITE_PUSH,
        _SITE_PULL,
        _SITE_STATUS,
        _SITE_PACS,
        _SITE_ROTATE_KEY,
        _SITE_ROTATE_SPOOL_KEY,
        _SITE_REJECTED,
    ),
)


COMMANDS = (_SITE,)
