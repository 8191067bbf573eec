"""A serve-cluster replica whose model is split across ranks that Ray places
(`torchchat serve-cluster --pipeline-parallel N`).

Serve gives each replica a placement group of N bundles (cluster.py's
`replica_options`, --pipeline-placement); the replica is rank 0, in the
first bundle, and starts ranks 1..N-1 as `PipelineStage` actors, one in each
other bundle, so they may be on other nodes. The ranks are
torchchat.pipeline's, as torchrun's are: rank 0 opens a TCP store on its
node's Ray address (a port the kernel picks, listening on that address
only), every rank joins the gloo group through it on the interface that
holds its node's address (or --pipeline-interface), and each reads only
its own stage from the model file, at its path on that rank's node.

A lost rank: an actor that dies closes its sockets, or, with its node cut
off, goes silent; either way rank 0's pipeline is lost (torchchat.pipeline:
the step in flight or the idle heartbeat, within --pipeline-timeout-s),
the engine says so, the replica's health check fails and Serve replaces
the whole replica (a new placement group, new actors, the stages loaded
again). The actors are the replica's own, and Ray ends an actor whose
owner dies: a replica that dies takes its ranks with it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from torchchat import pipeline
from torchchat.errors import UserError

if TYPE_CHECKING:
    from server.common import Config
    from server.engine import Engine

log = logging.getLogger("torchchat.server")

# How long rank 0 waits for the other ranks' actors to start and join (each
# starts a Ray worker and imports torch); their stages' load is
# torchchat.pipeline's first exchange, bounded there.
START_S = 300.0


def interface_for(address: str) -> str:
    """The network interface of this node that holds `address` (gloo picks
    its sockets' address by interface)."""
    import ipaddress

    import psutil

    ip = ipaddress.ip_address(address)
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.netmask is None:
                continue
            try:
                net = ipaddress.ip_network(f"{a.address.split('%')[0]}/{a.netmask}", strict=False)
            except ValueError:
                continue  # not an IP address (a link-layer one)
            if ip in net:
                return name
    raise pipeline.PipelineError(
        f"no network interface of this node holds {address}; give --pipeline-interface"
    )


def _here() -> tuple[str, str, int]:
    """(this worker's node id, its node's address, the threads its Ray
    CPUs give: at least 1)."""
    ctx = ray.get_runtime_context()
    node = ctx.get_node_id()
    # The address the node was started with (`ray start --node-ip-address`).
    # Not ray.util.get_node_ip_address(): in a worker that is the address of
    # the host's route to the internet, which need not be the node's.
    (address,) = [n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node]
    cpus = ctx.get_assigned_resources().get("CPU", 1.0)
    return node, address, max(1, math.floor(cpus))


def _join(rank: pipeline.Rank, store: Any, threads: int, interface: str | None) -> None:
    _, address, _ = _here()
    # gloo reads its interface from the environment.
    os.environ["GLOO_SOCKET_IFNAME"] = interface or interface_for(address)
    pipeline.init(rank, store, threads)


class PipelineStage:
    """Rank r > 0 of a replica's pipeline, a Ray actor in bundle r of the
    replica's placement group."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(
        self,
        argv: list[str],
        rank: pipeline.Rank,
        master: tuple[str, int],
        interface: str | None,
    ) -> str | None:
        """Joins the group through rank 0's store, loads this rank's stage
        and runs it until rank 0 closes the pipeline: None then, else why
        it stopped (one line). Leaving the group on a failure closes this
        rank's sockets, so that rank 0 hears of it at once."""
        from server import main
        from torchchat import loading

        try:
            _, _, threads = _here()
            store = pipeline.store_client(master[0], master[1], rank.world)
            _join(rank, store, threads, interface)
            args = main.build_parser().parse_args(argv)
            loading.serve_stage(loading.options_from_args(args))
            return None
        except Exception as e:  # noqa: BLE001 (said to rank 0, in one line)
            log.exception("pipeline rank %d stopped", rank.rank)
            said = isinstance(e, (UserError, pipeline.PipelineLost))
            return str(e) if said else f"{type(e).__name__}: {e}"
        finally:
            pipeline.close_group()


class Ranks:
    """Rank 0's side, in the replica: the other ranks' actors, started in the
    replica's placement group, and the group joined with them."""

    def __init__(self, argv: list[str], world: int, interface: str | None):
        from ray.util.placement_group import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = get_current_placement_group()
        if pg is None or len(pg.bundle_specs) < world:
            raise pipeline.PipelineError(
                f"--pipeline-parallel {world}: this replica has no placement group of {world} "
                "bundles (deploy with `torchchat serve-cluster --pipeline-parallel`)"
            )
        node, address, threads = _here()
        store = pipeline.master_store(address, world)
        stage: Any = ray.remote(PipelineStage)
        self.actors: list[Any] = [
            stage.options(
                num_cpus=pg.bundle_specs[r].get("CPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=r
                ),
            ).remote()
            for r in range(1, world)
        ]
        self.runs: list[Any] = []
        try:
            nodes = [node, *ray.get([a.node.remote() for a in self.actors], timeout=START_S)]
            # Ranks on the same node share its cores, as torchrun's LOCAL_WORLD_SIZE says.
            ranks = [pipeline.Rank(r, world, nodes.count(n)) for r, n in enumerate(nodes)]
            master = (address, store.port)
            self.runs = [
                a.run.remote(argv, ranks[r], master, interface)
                for r, a in enumerate(self.actors, 1)
            ]
            self.rank = ranks[0]
            self._join(store, threads, interface)
        except BaseException:
            self.kill()
            raise

    def _join(self, store: Any, threads: int, interface: str | None) -> None:
        """Joins the group as rank 0, watching the actors meanwhile: one
        that stops first says why, instead of a wait for its join."""
        failed: list[BaseException] = []

        def join() -> None:
            try:
                _join(self.rank, store, threads, interface)
            except BaseException as e:  # said below
                failed.append(e)

        joining = threading.Thread(target=join, daemon=True)
        joining.start()
        deadline = time.monotonic() + START_S
        while joining.is_alive():
            why = self.ended(timeout=0.5)
            if why is not None:
                raise pipeline.PipelineError(why)
            if time.monotonic() > deadline:
                raise pipeline.PipelineError(
                    f"the pipeline's ranks did not join within {START_S:g} s"
                )
        if failed:
            raise failed[0]

    def build(self, args: argparse.Namespace) -> tuple[Engine, Config]:
        """The server's engine over the pipeline (server.main.build), with a
        rank's own failure (its stage could not load) said as the error."""
        from server import main

        try:
            try:
                return main.build(args)
            except pipeline.PipelineError:
                why = self.ended(timeout=10)
                if why is not None:
                    raise pipeline.PipelineError(why) from None
                raise
        except BaseException:
            self.kill()
            raise

    def ended(self, timeout: float = 0) -> str | None:
        """Why a rank's actor has stopped, waiting up to `timeout` seconds for
        one to stop; None while they all run (they stop only when rank 0
        closes the pipeline)."""
        if not self.runs:
            return None
        done, _ = ray.wait(self.runs, num_returns=1, timeout=timeout)
        if not done:
            return None
        r = self.runs.index(done[0]) + 1
        try:
            why = ray.get(done[0]) or "stopped"
        except RayError as e:
            text = str(e).strip()
            why = text.splitlines()[0] if text else type(e).__name__
        return f"pipeline rank {r} (a Ray actor) ended: {why}"

    def close(self) -> None:
        """Stops every rank (at once when the pipeline is lost) and ends their
        actors."""
        try:
            for line in pipeline.describe(pipeline.shutdown(self.rank)):
                log.info("%s", line)
        finally:
            self.kill()

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
