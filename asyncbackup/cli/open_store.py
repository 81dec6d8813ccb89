"""The store a command names: its URL and the S3 options, wrapped for fault injection when asked."""

from __future__ import annotations

import argparse

from asyncbackup.errors import ConfigError
from asyncbackup.storage import FaultyStorage, Storage, StoreOptions, open_storage
from asyncbackup.storage.options import DEFAULT_MAX_CONNECTIONS


def open_store(args: argparse.Namespace) -> Storage:
    """The store ``args.store`` names, with its S3 options; in a ``FaultyStorage`` when
    --inject-faults or --inject-latency asks for one.

    Raises:
        ConfigError: S3 options for a store that is not s3://, a negative --inject-latency, or
            a URL ``open_storage`` refuses.
    """
    options = StoreOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        max_connections=max(getattr(args, "concurrency", 1), DEFAULT_MAX_CONNECTIONS),
        storage_class=getattr(args, "storage_class", None),
        server_side_encryption=getattr(args, "sse", None),
        kms_key_id=getattr(args, "sse_kms_key_id", None),
    )
    s3_only = options.s3_only or args.addressing_style != "auto"
    if s3_only and not args.store.lower().startswith("s3://"):
        raise ConfigError(
            f"{args.store}: --endpoint-url, --region, --addressing-style, --storage-class and "
            "--sse apply to s3:// stores only (a gs:// store finds an emulator through "
            "STORAGE_EMULATOR_HOST)"
        )
    store = open_storage(args.store, options)
    if args.inject_faults or args.inject_latency:
        if args.inject_latency < 0:
            raise ConfigError(f"--inject-latency must not be negative, not {args.inject_latency}")
        store = FaultyStorage(
            store,
            rate=args.inject_faults,
            latency=args.inject_latency / 1000,
            seed=args.fault_seed,
        )
    return store
