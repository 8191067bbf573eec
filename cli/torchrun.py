"""torch's own torchrun, with this build's Python path, so that its ranks
can run the CLI as `-m cli`:

    tools/bazel run //torchchat:torchrun -- --nproc-per-node 2 -m cli generate --pipeline-parallel 2

Every torchrun flag works as documented (--nnodes, --node-rank,
--master-addr/--master-port, --rdzv-endpoint, ...); each rank gets
torchrun's environment and this interpreter with PYTHONPATH set to the
modules this binary sees.
"""

import os
import sys

from torch.distributed.run import main

if __name__ == "__main__":
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    sys.exit(main())
