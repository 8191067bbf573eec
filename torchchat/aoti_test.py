"""compile_package copies no weight: the first run's compile of a GGUF in
its own formats holds the model once (AOTInductor copies every buffer it is
handed, so weights must reach it as parameters; aoti.freeze_constants)."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

# Run alone in a fresh process: its peak RSS must be the compile's own.
SCRIPT = r"""
import json, sys
from pathlib import Path

import torch
import torch._inductor  # imported before the peak is reset: its code is not the model's

from testing import gguf_blocks
from torchchat import aoti
from torchchat.checkpoint import load_checkpoint, load_native

d = Path(sys.argv[1])
gguf = gguf_blocks.write_model(d / "m.gguf", {"*": "Q8_0"}, dim=2048, hidden=8192, n_layers=4)
model, _ = load_native(load_checkpoint(gguf), 64)
weights = sum(b.numel() * b.element_size() for b in model.buffers() if b.dtype == torch.uint8)
weights += sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype == torch.uint8)
for b in [*model.buffers(), *model.parameters()]:
    b.sum() if b.dtype != torch.uint8 else b.view(-1)[::4096].sum()  # every page resident


def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024


before = status("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
aoti.compile_package(model, d / "m.pt2", {}, external_weights=True)
print(json.dumps({"weights": weights, "growth": status("VmHWM:") - before}))
"""


class FirstRunMemoryTest(unittest.TestCase):
    def test_compiling_copies_no_weight(self):
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as d:
            r = subprocess.run(
                [sys.executable, "-c", SCRIPT, d], capture_output=True, text=True, timeout=600
            )
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            got = json.loads(r.stdout.strip().splitlines()[-1])
        # 260 MB of Q8_0 weights; copying them would grow the peak by as much.
        self.assertGreater(got["weights"], 200e6)
        self.assertLess(got["growth"], 0.4 * got["weights"], got)


if __name__ == "__main__":
    unittest.main()
