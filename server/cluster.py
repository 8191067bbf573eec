"""`torchchat serve-cluster`: the OpenAI server as a Ray Serve application,
N replicas of the engine across a Ray cluster's nodes.

Takes `torchchat server`'s flags (each replica is that server: its model,
its slots, its API key) and these. With --address it joins a running
cluster (nodes started with `ray start`, see server/README.md); without, it
starts a one-node cluster here on loopback. It deploys, prints the URL and
serves until interrupted, then removes the application (--detach leaves it
running and exits). Errors a user can cause print one line and exit 1.

With --pipeline-parallel N each replica's model is split across N ranks
that Ray places (server/ray_pipeline.py): the replica and N-1 actors in a
placement group of its own.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time

from server import main as server_main
from torchchat.errors import EXIT_ERROR, EXIT_INTERRUPT

# A node on this host only: loopback, but not 127.0.0.1, which Ray rewrites
# to the host's address on its route out (ray._private.services'
# resolve_ip_for_localhost: "make sure localhost isn't resolved to the
# loopback ip"), where its ports would face the network. Every 127.x
# address is on `lo`.
LOOPBACK_NODE = "127.0.0.2"

# --pipeline-placement: Ray's placement group strategies.
PLACEMENTS = {
    "pack": "PACK",
    "spread": "SPREAD",
    "strict-pack": "STRICT_PACK",
    "strict-spread": "STRICT_SPREAD",
}


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--address",
        help="a running Ray cluster's GCS address, host:port (default: start a one-node "
        f"cluster on {LOOPBACK_NODE}, loopback)",
    )
    g.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2)")
    g.add_argument(
        "--min-replicas",
        type=int,
        help="autoscale between --min-replicas and --max-replicas on ongoing requests "
        "(target: --parallel per replica)",
    )
    g.add_argument("--max-replicas", type=int)
    g.add_argument(
        "--target-ongoing-requests",
        type=float,
        help="autoscaling's target of ongoing requests per replica (default: --parallel)",
    )
    g.add_argument(
        "--upscale-delay-s",
        type=float,
        default=30.0,
        help="autoscaling: how long the load must call for more replicas before they start "
        "(default 30, Serve's)",
    )
    g.add_argument(
        "--downscale-delay-s",
        type=float,
        default=600.0,
        help="autoscaling: how long it must call for fewer before replicas stop (default 600, "
        "Serve's)",
    )
    g.add_argument(
        "--replica-cpus",
        type=float,
        default=1.0,
        help="Ray CPUs each replica reserves (with --pipeline-parallel, each of its ranks)",
    )
    g.add_argument(
        "--max-replicas-per-node", type=int, help="at most this many replicas on one node"
    )
    g.add_argument(
        "--routing",
        choices=("prefix", "pow2"),
        default="prefix",
        help="prefix: a request goes to the replica that served its prefix (Ray Serve's "
        "PrefixCacheAffinityRouter, behind a front deployment); pow2: the HTTP proxy "
        "straight to the replicas, power of two choices",
    )
    g.add_argument(
        "--pipeline-placement",
        choices=tuple(PLACEMENTS),
        default="pack",
        help="with --pipeline-parallel N, where Ray puts each replica's N ranks (its placement "
        "group's strategy): pack them on as few nodes as fit, spread them over as many as it "
        "can, or strictly on one node, or each on its own node (default pack)",
    )
    g.add_argument(
        "--pipeline-interface",
        metavar="IFNAME",
        help="with --pipeline-parallel, the network interface the ranks' gloo traffic uses on "
        "every node (default: the one that holds the node's Ray address)",
    )
    g.add_argument("--app-name", default="torchchat", help="the Serve application's name")
    g.add_argument("--detach", action="store_true", help="deploy and exit; the app keeps serving")


def build_parser() -> argparse.ArgumentParser:
    p = server_main.build_parser()
    p.prog = "torchchat serve-cluster"
    p.description = __doc__.splitlines()[0]
    add_cluster_args(p)
    return p


# Flags whose value is a file: a replica runs in another directory (and
# maybe on another host, where the recipe has the same paths).
PATH_FLAGS = ("--checkpoint-path", "--gguf-path", "--tokenizer-path", "--pte-path",
              "--aoti-package-path")  # fmt: skip


def absolute(argv: list[str]) -> list[str]:
    out: list[str] = []
    for a in argv:
        flag, eq, value = a.partition("=")
        if eq and flag in PATH_FLAGS:
            a = f"{flag}={os.path.abspath(value)}"
        elif out and out[-1] in PATH_FLAGS:
            a = os.path.abspath(a)
        out.append(a)
    return out


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the cluster's flags, the rest: what each replica's server takes)."""
    only = argparse.ArgumentParser(add_help=False)
    add_cluster_args(only)
    ns, rest = only.parse_known_args(argv)
    return ns, absolute(rest)


def check(args: argparse.Namespace) -> None:
    from torchchat.errors import UserError

    if args.replicas < 1:
        raise UserError("--replicas must be positive")
    if (args.min_replicas is None) != (args.max_replicas is None):
        raise UserError("--min-replicas and --max-replicas go together")
    if args.min_replicas is not None and not 0 <= args.min_replicas <= args.max_replicas:
        raise UserError("--min-replicas must be between 0 and --max-replicas")
    if args.max_replicas is not None and args.max_replicas < 1:
        raise UserError("--max-replicas must be positive")
    if args.target_ongoing_requests is not None and args.target_ongoing_requests <= 0:
        raise UserError("--target-ongoing-requests must be positive")
    if args.upscale_delay_s < 0 or args.downscale_delay_s < 0:
        raise UserError("--upscale-delay-s and --downscale-delay-s must not be negative")
    if args.replica_cpus < 0:
        raise UserError("--replica-cpus must not be negative")
    if ranks(args) > 1:
        # Serve refuses both together: a replica's placement group decides.
        if args.max_replicas_per_node:
            raise UserError(
                "--max-replicas-per-node does not go with --pipeline-parallel; place the ranks "
                "with --pipeline-placement"
            )
        if args.replica_cpus <= 0:
            raise UserError("--pipeline-parallel needs a positive --replica-cpus (each rank's)")


def ranks(args: argparse.Namespace) -> int:
    """Processes per replica: --pipeline-parallel's ranks, else 1."""
    return max(1, args.pipeline_parallel or 1)


def replica_options(args: argparse.Namespace) -> dict[str, object]:
    """The engine deployment's Serve options for the flags."""
    options: dict[str, object] = {
        "ray_actor_options": {"num_cpus": args.replica_cpus},
        # The engine queues and refuses (429) itself, as one server does.
        "max_ongoing_requests": args.parallel + args.max_queue,
        "health_check_period_s": 2,
        "health_check_timeout_s": 10,
        "graceful_shutdown_timeout_s": 5,
    }
    if args.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests or args.parallel,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
        }
    else:
        options["num_replicas"] = args.replicas
    if args.max_replicas_per_node:
        options["max_replicas_per_node"] = args.max_replicas_per_node
    if ranks(args) > 1:
        # A bundle per rank: the replica (rank 0) in the first, an actor in
        # each other (server/ray_pipeline.py).
        options["placement_group_bundles"] = [{"CPU": args.replica_cpus}] * ranks(args)
        options["placement_group_strategy"] = PLACEMENTS[args.pipeline_placement]
    if args.routing == "prefix":
        # The class `ray.serve.llm.request_router` makes public; imported from
        # where it lives, because that package also imports vLLM's protocol
        # models at import time, and we have no vLLM.
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
            PrefixCacheAffinityRouter,
        )
        from ray.serve.config import RequestRouterConfig

        options["request_router_config"] = RequestRouterConfig(
            # Ray's pydantic field is typed loosely; it takes the class itself.
            request_router_class=PrefixCacheAffinityRouter  # type: ignore[arg-type]
        )
    return options


def connect(args: argparse.Namespace) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray puts the driver's directory first on its workers' path: make it the
    # root this code runs from, so that replicas import the same modules
    # (a source checkout's kernels/ has no built libraries).
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.address:
        # This process joins as a driver on the head node, whose address
        # Ray must see as this node's (not another interface of the host).
        host = args.address.rsplit(":", 1)[0]
        ray.init(address=args.address, _node_ip_address=host, logging_level=logging.WARNING)
        return
    # A cluster of this one node, on loopback. Its workers import our code
    # from the paths this process has. Ray's CPUs are logical: enough for
    # the replicas and the prefix router's actor, however many cores.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    n = max(args.replicas, args.max_replicas or 0) * ranks(args)
    cpus = max(os.cpu_count() or 1, math.ceil(n * args.replica_cpus) + 1)
    ray.init(
        _node_ip_address=LOOPBACK_NODE,
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


def deploy(args: argparse.Namespace, replica_argv: list[str]) -> str:
    """Deploys the app on the cluster (connecting first); returns its URL."""
    from ray import serve

    from server.replicas import front_deployment, replica_deployment

    connect(args)
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": args.host, "port": args.port},
    )
    replicas = replica_deployment(args.routing == "pow2", **replica_options(args)).bind(
        replica_argv, args.pipeline_interface
    )
    if args.routing == "prefix":
        app = front_deployment(
            num_replicas=1,
            ray_actor_options={"num_cpus": 0},
            max_ongoing_requests=10_000,  # each replica bounds its own
        ).bind(replicas, args.max_body_bytes)
    else:
        app = replicas
    serve.run(app, name=args.app_name, route_prefix="/")
    return f"http://{args.host}:{args.port}/v1"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)  # every flag checked, --help for all
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _, replica_argv = split_argv(argv)
    from torchchat import loading

    try:
        check(args)
        url = deploy(args, replica_argv)
    except loading.expected_errors() as e:
        print(f"torchchat serve-cluster: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 (Ray's failures to deploy: one line)
        if type(e).__module__.startswith("ray") or "Deploying application" in str(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"torchchat serve-cluster: error: {first}", file=sys.stderr)
            return EXIT_ERROR
        raise
    n = (
        f"{args.min_replicas}-{args.max_replicas}"
        if args.min_replicas is not None
        else args.replicas
    )
    split = f" of {ranks(args)} ranks each" if ranks(args) > 1 else ""
    print(
        f"torchchat serve-cluster: {n} replicas{split} ({args.routing} routing) on {url}",
        file=sys.stderr,
        flush=True,
    )
    if args.detach:
        return 0
    import ray
    from ray import serve

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop, as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(args.app_name)
        ray.shutdown()  # and, without --address, the cluster it started
        return EXIT_INTERRUPT


if __name__ == "__main__":
    sys.exit(main())
