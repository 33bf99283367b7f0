"""``mlperf-operator``: run the operator (cluster-wide or in chosen namespaces).

With --leader-election (the chart's default, for its two replicas) it stands by until it holds the Lease, then
reconciles; without it (one process, e.g. from a shell) it reconciles at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading

import kopf
from prometheus_client import start_http_server

from . import leader, metrics

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlperf-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument("--health-port", type=int, default=8081, help="port of /healthz (0: off)")
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reconcile only while holding a Lease, so that replicas stand by (default: off, one process)",
    )
    parser.add_argument("--lease-name", default="mlperf-operator", help="the Lease's name (default: %(default)s)")
    parser.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the Lease's namespace (default: $POD_NAMESPACE, else the first --namespace, else default)",
    )
    parser.add_argument(
        "--leader-identity",
        help="this replica's name in the Lease (default: $POD_NAME or the host name, and a random suffix)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    # kopf reports every handler call at INFO; keep the operator's own messages readable.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    port = int(os.environ.get("MLPERF_METRICS_PORT", "8080"))
    if port:  # a standby serves its metrics too (mlperf_operator_leader 0)
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)

    if not args.leader_election:
        metrics.LEADER.set(1)
        _run_kopf(args, threading.Event())
        return
    from kubernetes.client import CoordinationV1Api

    from .kube import load_config

    load_config()
    config = leader.LeaseConfig(
        name=args.lease_name,
        namespace=args.lease_namespace or (args.namespace or ["default"])[0],
        identity=args.leader_identity or leader.default_identity(),
    )
    elector = leader.LeaderElector(CoordinationV1Api(), config)
    leader.run_as_leader(elector, lambda stop: _run_kopf(args, stop), args.health_port)


def _run_kopf(args: argparse.Namespace, stop: threading.Event) -> None:
    from . import handlers  # registers the handlers

    handlers.WATCHED_NAMESPACES, handlers.STOP = args.namespace, stop
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    # kopf waits on `stop` in a thread of the loop's executor. asyncio.run() would wait for that thread at
    # its end, so a stop that did not come through `stop` (a signal while kopf starts up) would hang the
    # process; with a loop of our own, kopf returns and `stop` is set after it.
    loop = asyncio.new_event_loop()
    try:
        kopf.run(
            loop=loop,
            standalone=True,  # the Lease (or a single process) makes it the only one; no kopf peering objects
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
            liveness_endpoint=liveness,
            stop_flag=stop,  # set by a signal that came before kopf's own handlers
        )
    finally:
        stop.set()
        loop.close()


if __name__ == "__main__":
    main()
