"""generate and chat --pipeline-parallel 2 on a tiny 4-layer GGUF: the text
of one process, whether the CLI starts the second rank itself or torchrun
starts both (as two one-rank nodes, the two-host recipe, on 127.0.0.1);
errors stop every rank; a rank that stops answering ends chat with one line
of error within --pipeline-timeout-s."""

import os
import select
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

os.environ["GLOO_SOCKET_IFNAME"] = "lo"

from testing import tiny_model
from testing.cli_harness import CliTestCase, run
from testing.procs import alive, free_port, spawned

# Long enough for two micro-batches of 32 tokens.
PROMPT = " ".join(tiny_model.TEXT[:7])


TIMEOUT_S = 3
CLI = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"


class PipelineCliTest(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        ckpt = tiny_model.write_checkpoint(self.dir / "tiny", n_layers=4)
        gguf = tiny_model.write_gguf(ckpt, self.dir / "tiny.gguf")
        self.model = ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
        self.model += ["--compile", "none", "--temperature", "0", "--max-new-tokens", "24"]

    def test_generate_and_chat_launched_here(self):
        argv = ["generate", *self.model, "--prompt", PROMPT]
        rc, want, err = run(argv)
        self.assertEqual(rc, 0, err)
        rc, got, err = run([*argv, "--pipeline-parallel", "2"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(got, want)
        self.assertIn("pipeline rank 0: layers 0-1", err)
        self.assertIn("pipeline rank 1: layers 2-3", err)
        turns = "Hello, my name is\nThe quick brown fox\n"
        rc, want, err = run(["chat", *self.model, "--quiet"], stdin=turns)
        self.assertEqual(rc, 0, err)
        rc, got, err = run(["chat", *self.model, "--quiet", "--pipeline-parallel", "2"], turns)
        self.assertEqual(rc, 0, err)
        self.assertEqual(got, want)
        self.assertEqual(got.count("Assistant: "), 2)

    def test_torchrun_two_nodes(self):
        rc, want, err = run(["generate", *self.model, "--prompt", PROMPT])
        self.assertEqual(rc, 0, err)
        torchrun = Path(__file__).parent / "torchrun"  # beside this file in the runfiles
        port = str(free_port())
        nodes = []
        for node in range(2):
            cmd = [str(torchrun), "--nnodes", "2", "--node-rank", str(node)]
            cmd += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port]
            cmd += ["-m", "cli", "generate", *self.model, "--quiet", "--prompt", PROMPT]
            cmd += ["--pipeline-parallel", "2"]
            nodes.append(
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        outs = [p.communicate(timeout=120) for p in nodes]
        for p, (_, e) in zip(nodes, outs):
            self.assertEqual(p.returncode, 0, e)
        self.assertEqual(outs[0][0], want)  # rank 0 prints the text
        self.assertEqual(outs[1][0], "")

    def test_errors_stop_every_rank(self):
        self.assert_one_line_error(
            ["generate", *self.model, "--pipeline-parallel", "2", "--speculate", "prompt-lookup"],
            r"--speculate and --draft run in one process",
        )
        # A rank that fails to load: every rank says so and exits.
        self.assert_one_line_error(
            ["generate", *self.model, "--pipeline-parallel", "2", "--pte-path", "x.pte"],
            r"give either a checkpoint or an exported artifact",
        )

    def test_stopped_rank_ends_chat(self):
        argv = ["chat", *self.model, "--quiet", "--pipeline-parallel", "2"]
        argv += ["--pipeline-timeout-s", str(TIMEOUT_S)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        ranks: set[int] = set()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"Hello, my name is\n")
            proc.stdin.flush()
            # The first turn's answer, through both ranks (both are loaded).
            out, deadline = b"", time.monotonic() + 180
            while b"\n" not in out.partition(b"Assistant: ")[2]:
                self.assertLess(time.monotonic(), deadline, out)
                if select.select([proc.stdout], [], [], 1)[0]:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        self.fail(f"chat ended: {out!r} {proc.communicate()}")
                    out += chunk
            ranks = spawned(proc.pid)
            self.assertEqual(len(ranks), 1)
            for p in ranks:
                os.kill(p, signal.SIGSTOP)
            start = time.monotonic()
            _, err = proc.communicate(b"The quick brown fox\n", timeout=TIMEOUT_S + 60)
            took = time.monotonic() - start
        finally:
            if proc.poll() is None:
                proc.kill()
            for p in alive(ranks):
                os.kill(p, signal.SIGKILL)
        self.assertEqual(proc.returncode, 1, err)
        lines = [ln for ln in err.decode().strip().splitlines() if not ln.startswith("[cpuinfo")]
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], r"^torchchat: error: pipeline rank lost: no answer within 3 s")
        self.assertLess(took, TIMEOUT_S + 30)
        # The stopped rank was killed, not left behind.
        deadline = time.monotonic() + 30
        while alive(ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(alive(ranks), set())


if __name__ == "__main__":
    sys.exit(unittest.main())
