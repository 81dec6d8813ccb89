"""The values of command-line options: sizes, durations, rates, targets, parsed with the
message argparse shows for a bad one."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from asyncbackup.errors import ConfigError

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8M', '8MiB', '512K' or '65536' as a number of bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 65536, 512K or 8M")
    unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(match.group(1)) * unit


_SHARE = re.compile(r"(\d+(?:\.\d+)?)\s*%?")


def parse_share(text: str) -> float | None:
    """'10%' or '10' as 0.1; 'unlimited' as None (no limit)."""
    if text.strip().lower() == "unlimited":
        return None
    match = _SHARE.fullmatch(text.strip())
    if not match or float(match.group(1)) >= 100:
        raise argparse.ArgumentTypeError(
            f"invalid share {text!r}: use a percentage below 100, e.g. 10%, 0% or 2.5%, or "
            "'unlimited'"
        )
    return float(match.group(1)) / 100


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '24h' or '7d' as a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 0, 90s, 30m, 24h or 7d"
        )
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
    return float(match.group(1)) * unit


def fault_rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fault rate is between 0 and 1, not {text}")
    return value


def target_dir(text: str) -> Path:
    if text == "-":
        raise argparse.ArgumentTypeError(
            "restore writes a directory tree, not standard output: give a directory "
            "(./- for a directory named '-'); 'asyncbackup cat STORE NAME PATH' writes one "
            "file to standard output"
        )
    return Path(text)


def bandwidth_rate(text: str) -> float:
    try:
        from asyncbackup.bandwidth import parse_rate  # asyncio: only when the option is given

        return parse_rate(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
