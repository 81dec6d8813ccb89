"""CPU per SigV4 signature of one chunk PUT, by four signers, interleaved, same request.

    python -m benchmarks.signers [--rounds 5] [--signs 20000]

The request is the lean path's chunk PUT (``UNSIGNED-PAYLOAD``, the SHA-256 checksum header,
path-style URL). Contenders: a hand-written signer (the reference: the least work SigV4 needs),
botocore's ``S3SigV4Auth`` with the signing key cached (``asyncbackup.storage.s3lean``, what the
store uses), botocore's ``S3SigV4Auth`` as botocore uses it (the key derived per request), and
AWS's standalone ``aws-sdk-signers`` if importable (it requires Python 3.12; to measure it on
3.11, unpack its wheel: ``pip download aws-sdk-signers==0.4.0 --no-deps --python-version 3.12
--only-binary=:all: -d /tmp/w && unzip /tmp/w/*.whl -d /tmp/signers`` and run with
``PYTHONPATH=/tmp/signers``). Every signer must produce the same Authorization header for the
same instant, or the run stops: a fast wrong signature is no contender.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from asyncbackup.storage.s3lean import CachedKeySigV4Auth
from benchmarks.report import RESULTS, command, machine, save

KEY, SECRET, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1"
URL = "https://127.0.0.1:9000/bench/prefix/chunks/" + "ab" * 32
CHECKSUM = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
NOW = datetime(2026, 11, 29, 17, 0, 0)
Sign = Callable[[], str]


class _Unsigned:
    s3 = {"payload_signing_enabled": False}  # noqa: RUF012


def _headers() -> dict[str, str]:
    return {
        "x-amz-sdk-checksum-algorithm": "SHA256",
        "x-amz-checksum-sha256": CHECKSUM,
        "Host": urlsplit(URL).netloc,
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
    }


def botocore_signer(auth: S3SigV4Auth) -> Sign:
    def sign() -> str:
        request = AWSRequest(method="PUT", url=URL, headers=_headers())
        request.context["client_config"] = _Unsigned
        auth.add_auth(request)
        return str(request.headers["Authorization"])

    return sign


def hand_signer() -> Sign:
    """SigV4 by hand: the canonical request of exactly these headers, the day's key cached."""
    parts = urlsplit(URL)
    path = quote(parts.path, safe="/~")
    keys: dict[str, bytes] = {}

    def sign() -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        key = keys.get(day)
        if key is None:
            key = f"AWS4{SECRET}".encode()
            for part in (day, REGION, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            keys[day] = key
        headers = {
            "host": parts.netloc,
            "x-amz-checksum-sha256": CHECKSUM,
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
            "x-amz-date": stamp,
            "x-amz-sdk-checksum-algorithm": "SHA256",
        }
        names = ";".join(headers)
        canonical = "\n".join(
            ["PUT", path, "", *(f"{n}:{v}" for n, v in headers.items()), "", names,
             "UNSIGNED-PAYLOAD"]
        )  # fmt: skip
        scope = f"{day}/{REGION}/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={names}, "
            f"Signature={signature}"
        )

    return sign


def sdk_signers_signer() -> Sign | None:
    try:
        from aws_sdk_signers import (  # type: ignore[import-not-found,unused-ignore]
            URI,
            AWSCredentialIdentity,
            AWSRequest,
            Field,
            Fields,
            SigV4Signer,
        )
    except ImportError:
        return None
    signer = SigV4Signer()
    identity = AWSCredentialIdentity(access_key_id=KEY, secret_access_key=SECRET)
    parts = urlsplit(URL)
    host, port = parts.netloc.split(":")
    destination = URI(scheme="https", host=host, port=int(port), path=parts.path)

    def sign() -> str:
        fields = Fields(
            [
                Field(name="x-amz-sdk-checksum-algorithm", values=["SHA256"]),
                Field(name="x-amz-checksum-sha256", values=[CHECKSUM]),
                Field(name="host", values=[parts.netloc]),
                Field(name="x-amz-content-sha256", values=["UNSIGNED-PAYLOAD"]),
            ]
        )
        request = AWSRequest(destination=destination, method="PUT", body=None, fields=fields)
        properties: Any = {
            "region": REGION,
            "service": "s3",
            "payload_signing_enabled": False,
            "uri_encode_path": False,
            "date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        }
        signed = signer.sign(request=request, identity=identity, properties=properties)
        return str(signed.fields["Authorization"].as_string())

    return sign


def contenders() -> dict[str, Sign]:
    frozen = ReadOnlyCredentials(KEY, SECRET, None, None)
    found: dict[str, Sign] = {
        "hand signer": hand_signer(),
        "botocore S3SigV4Auth, cached key": botocore_signer(
            CachedKeySigV4Auth(frozen, "s3", REGION)
        ),
        "botocore S3SigV4Auth": botocore_signer(S3SigV4Auth(frozen, "s3", REGION)),
    }
    if (sdk := sdk_signers_signer()) is not None:
        found["aws-sdk-signers 0.4.0"] = sdk
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--signs", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    signers = contenders()
    # One instant for all: every Authorization must be the same.
    with (
        mock.patch("botocore.auth.get_current_datetime", lambda: NOW),
        mock.patch(f"{__name__}.datetime", mock.Mock(now=lambda tz: NOW.replace(tzinfo=tz))),
    ):
        headers = {name: sign() for name, sign in signers.items()}
    if len(set(headers.values())) != 1:
        raise SystemExit(
            "the signers disagree:\n" + "\n".join(f"{k}: {v}" for k, v in headers.items())
        )
    micros: dict[str, list[float]] = {name: [] for name in signers}
    for _ in range(args.rounds):
        for name, sign in signers.items():  # interleaved: each round, each signer once
            started = time.process_time()
            for _ in range(args.signs):
                sign()
            micros[name].append((time.process_time() - started) / args.signs * 1e6)
    reference = statistics.median(micros["hand signer"])
    lines = [
        f"| signer | µs of CPU per signature (median of {args.rounds}) | vs hand signer |",
        "|---|---:|---:|",
    ]
    for name, values in micros.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.1f} | {median / reference:.2f}x |")
    table = "\n".join(lines)
    print(table)
    result = {"command": command("benchmarks.signers", argv), "machine": machine(), "runs": micros}
    save(args.out, "signers", result, table)


if __name__ == "__main__":
    main()
