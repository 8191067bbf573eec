"""Ray's own command line (`ray start`, `ray stop`, `ray status`, `serve
status`...) from this repository's Python environment, so that a node it
starts runs replicas that can import torchchat: its workers inherit this
process's PYTHONPATH. `tools/bazel run //server:ray -- start --head ...`;
server/README.md has the two-host recipe."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if sys.argv[1:2] == ["serve"]:
        from ray.serve.scripts import cli as serve_cli

        sys.argv = ["serve", *sys.argv[2:]]
        serve_cli()
    else:
        from ray.scripts.scripts import main as ray_cli

        sys.argv = ["ray", *sys.argv[1:]]
        ray_cli()


if __name__ == "__main__":
    main()
