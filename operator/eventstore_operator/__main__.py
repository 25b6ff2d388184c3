"""`eventstore-operator` / `python -m eventstore_operator`: run the kopf operator.

Equivalent to `kopf run --standalone -m eventstore_operator.handlers`, but with the
handlers' explicit registry and a namespace rule that matches the RBAC in
manifests/: the operator watches the namespaces given with --namespace (or
$POD_NAMESPACE, its own namespace), or every namespace with --all-namespaces (which
then needs the cluster-wide RBAC variant). It always runs standalone (no peering
CRDs): run one replica.
"""

from __future__ import annotations

import argparse
import os
import sys

import kopf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eventstore-operator", description="Run the EventStore kopf operator."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable); default: $POD_NAMESPACE",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="accepted for kopf compatibility; the operator always runs standalone",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument(
        "--allowed-image-prefix",
        action="append",
        default=[p for p in os.environ.get("EVENTSTORE_OPERATOR_ALLOWED_IMAGE_PREFIXES", "").split(",") if p],
        help="only EventStores whose images start with one of these run (repeatable; "
        "default: $EVENTSTORE_OPERATOR_ALLOWED_IMAGE_PREFIXES, comma-separated; none: any image)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(argv)

    namespaces: list[str] = list(args.namespace)
    if not namespaces and not args.all_namespaces:
        own = os.environ.get("POD_NAMESPACE")
        if not own:
            parser.error("give --namespace NS (repeatable) or --all-namespaces, or set POD_NAMESPACE")
        namespaces = [own]

    # Imported here so `--help` works without a cluster or kopf's logging set up.
    from eventstore_operator import handlers

    handlers.STATE = handlers.OperatorState(
        watch_namespaces=None if args.all_namespaces else namespaces,
        allowed_image_prefixes=tuple(args.allowed_image_prefix))

    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    kopf.run(
        registry=handlers.registry,
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
