"""What a command prints: the summary lines, listings and reports, and its exit code."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from asyncbackup import show
from asyncbackup.backup import BackupSummary
from asyncbackup.commit import CommitSummary
from asyncbackup.dask_run import ClusterSummary
from asyncbackup.diff import BackupDiff
from asyncbackup.engine import BackupInfo, VerifyReport
from asyncbackup.manifest import Manifest
from asyncbackup.prune import PruneReport
from asyncbackup.restore import RestoreSummary
from asyncbackup.shards import ShardSummary
from asyncbackup.unlock import UnlockReport

log = logging.getLogger("asyncbackup")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNINGS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def report(args: argparse.Namespace, result: object) -> int:
    """Print or log what ``result`` says, for a person or a script; the exit code."""
    if isinstance(result, ShardSummary | CommitSummary):
        return _report_shards(args, result)
    if isinstance(result, ClusterSummary):
        return _report_cluster(args, result)
    if isinstance(result, BackupSummary):
        b = result
        since = f" since {b.parent}" if b.parent else ", no parent"
        log.info(
            "backup %s committed: %d files (%d unchanged%s), %d dirs, %d links, %d skipped; "
            "%s of %s read, %d chunks uploaded (%s), %d already stored; %d retries; %.1fs, %s/s",
            b.name, b.files, b.unchanged, since, b.dirs, b.symlinks, b.skipped,
            _mib(b.bytes_read), _mib(b.bytes), b.chunks_uploaded, _mib(b.bytes_uploaded),
            b.chunks_skipped, b.retries, b.seconds, _mib(b.bytes / max(b.seconds, 1e-9)),
        )  # fmt: skip
        if getattr(args, "json", False):  # the summary for a script: one JSON document
            print(json.dumps(asdict(b), indent=1, default=str))
        else:
            print(b.name)
        if b.warnings:  # a cron job must be able to tell this from a clean success
            log.warning(
                "backup %s committed with %d warnings (files skipped or stored while changing; "
                "'asyncbackup show' lists them): exit %d",
                b.name, len(b.warnings), EXIT_WARNINGS,
            )  # fmt: skip
            return EXIT_WARNINGS
    elif isinstance(result, BackupDiff) and args.json:
        print(json.dumps(result.document(), indent=1))
    elif isinstance(result, BackupDiff):
        for line in result.lines():
            print(line)
        log.info("%s", result.summary())
    elif isinstance(result, RestoreSummary):
        r = result
        log.info(
            "restored %s into %s: %d files, %d dirs, %d links, %s; %d chunks downloaded; "
            "%d retries; %.1fs, %s/s",
            r.name, args.target, r.files, r.dirs, r.symlinks, _mib(r.bytes),
            r.chunks_downloaded, r.retries, r.seconds, _mib(r.bytes / max(r.seconds, 1e-9)),
        )  # fmt: skip
        if r.files_in_place or r.holes or r.leftovers_removed or r.deleted:
            log.info(
                "%d files already in place (kept, not fetched); %d chunks of zeros left as "
                "holes; %d temporary files of interrupted restores removed; %d entries the "
                "backup does not have deleted",
                r.files_in_place, r.holes, r.leftovers_removed, r.deleted,
            )  # fmt: skip
    elif isinstance(result, VerifyReport):
        return _report_verify(result)
    elif isinstance(result, PruneReport):
        for line in result.decision_lines():  # stdout: what a script needs
            print(line)
        log.info("%s", result.summary())
    elif isinstance(result, UnlockReport):
        for line in result.removed:
            print(line)
        for line in result.kept:
            log.info("left the live lock of %s (--force removes it)", line)
        log.info(
            "unlock: removed %d locks, left %d live ones", len(result.removed), len(result.kept)
        )
    elif isinstance(result, Manifest) and args.json:
        print(json.dumps(show.document(result), indent=1))
    elif isinstance(result, Manifest):
        print(show.text(result, files=args.files))
    elif isinstance(result, list):
        return _report_list(args, result)
    elif args.command == "cat":
        log.info(
            "wrote %s of backup %s to standard output, every chunk checked", args.path, args.name
        )
    else:
        log.info("deleted backup %s (its chunks stay until a prune)", args.name)
    return EXIT_OK


def _report_shards(
    args: argparse.Namespace, result: ShardSummary | CommitSummary, *, out: bool = True
) -> int:
    if isinstance(result, ShardSummary):
        b = result.backup
        log.info(
            "shard %s of backup %s recorded in %s%s: %d files (%d unchanged), %d dirs, %d links; "
            "%s of %s read, %d chunks uploaded (%s), %d already stored; %d retries; %.1fs; "
            "the backup exists once 'asyncbackup commit' has taken every shard",
            result.shard, b.name, result.record, " (a re-run)" if result.rerun else "",
            b.files, b.unchanged, b.dirs, b.symlinks, _mib(b.bytes_read), _mib(b.bytes),
            b.chunks_uploaded, _mib(b.bytes_uploaded), b.chunks_skipped, b.retries, b.seconds,
        )  # fmt: skip
        warnings = len(b.warnings)
    else:
        c = result
        verb = "was committed already" if c.already else "committed"
        log.info(
            "backup %s %s from %d shards: %d files, %d dirs, %d links, %s, %d chunks; %.1fs",
            c.name, verb, c.shards, c.files, c.dirs, c.symlinks, _mib(c.bytes), c.chunks,
            c.seconds,
        )  # fmt: skip
        for index, where in enumerate(c.where):
            log.info("shard %d/%d ran on %s", index, c.shards, where)
        warnings = len(c.warnings)
    if out and getattr(args, "json", False):
        print(json.dumps(asdict(result), indent=1, default=str))
    elif out:
        print(result.backup.name if isinstance(result, ShardSummary) else result.name)
    if warnings:
        log.warning(
            "%d files were skipped or stored while changing ('asyncbackup show' lists them once "
            "committed): exit %d", warnings, EXIT_WARNINGS,
        )  # fmt: skip
        return EXIT_WARNINGS
    return EXIT_OK


def _report_cluster(args: argparse.Namespace, result: ClusterSummary) -> int:
    for run in result.shards:
        log.info(
            "shard %d/%d ran on Dask worker %s (host %s, pid %d)%s: %d files, %s, %d chunks "
            "%s; %.1fs",
            run.index, len(result.shards), run.worker, run.host, run.pid,
            " (a re-run)" if run.rerun else "", run.files, _mib(run.bytes),
            run.chunks_uploaded, "uploaded" if result.operation == "backup" else "downloaded",
            run.seconds,
        )  # fmt: skip
    log.info(
        "%s %s: %d shards on %d Dask workers of %s; %.1fs",
        result.operation, result.name, len(result.shards), len(result.workers),
        result.scheduler, result.seconds,
    )  # fmt: skip
    if getattr(args, "json", False):
        print(json.dumps(asdict(result), indent=1, default=str))
    elif result.operation == "backup":
        print(result.name)
    if result.commit is not None:
        return _report_shards(argparse.Namespace(json=False, quiet=True), result.commit, out=False)
    return EXIT_OK


def _report_list(args: argparse.Namespace, infos: list[BackupInfo]) -> int:
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=1))
    else:
        if not infos:  # say so: on S3 or GCS a mistyped prefix also lists nothing
            log.info("no backups in %s", args.store)
        for i in infos:
            where = f"{i.finished}  {i.files} files  {_mib(i.bytes)}  {i.host}:{i.source}"
            where += f"  [{', '.join(i.tags)}]" if i.tags else ""
            print(f"{i.name}  {f'PROBLEM: {i.problem}' if i.problem else where}")
    bad = [i.name for i in infos if i.problem]
    if bad:  # every readable backup is listed; the exit code says that some are not
        log.error(
            "%d of %d backups cannot be read: %s (see PROBLEM above)",
            len(bad), len(infos), ", ".join(bad),
        )  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def _report_verify(report: VerifyReport) -> int:
    for name, problem in sorted(report.unreadable.items()):
        log.error("backup %s cannot be read: %s", name, problem)
    for what, damaged in (("missing", report.missing), ("corrupt", report.corrupt)):
        for digest, paths in sorted(damaged.items()):
            shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
            pack = report.packs.get(digest)
            where = f" (in packs/{pack})" if pack else ""
            log.error("chunk %s%s is %s; it holds part of: %s", digest, where, what, shown)
    for path, why in sorted(report.bad_files.items()):
        log.error("%s: %s", path, why)
    kind = "deep" if report.deep else "presence"
    what = report.name or f"{len(report.backups)} backups"
    if not report.ok:
        log.error(
            "verify (%s) of %s: %d missing and %d corrupt of %d chunks; %d files that would "
            "not restore; %d backups unreadable",
            kind, what, len(report.missing), len(report.corrupt), report.chunks_checked,
            len(report.bad_files), len(report.unreadable),
        )  # fmt: skip
        return EXIT_FAILED
    files = f", {report.files_checked} files ok" if report.deep else ""
    log.info("verify (%s) of %s: all %d chunks ok%s", kind, what, report.chunks_checked, files)
    return EXIT_OK


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
