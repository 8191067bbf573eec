"""generate and chat --pipeline-parallel 2 on a tiny 4-layer GGUF: the text
of one process, whether the CLI starts the second rank itself or torchrun
starts both (as two one-rank nodes, the two-host recipe, on 127.0.0.1);
errors stop every rank."""

import os
import socket
import subprocess
import sys
import unittest
from pathlib import Path

os.environ["GLOO_SOCKET_IFNAME"] = "lo"

from testing import tiny_model
from testing.cli_harness import CliTestCase, run

# Long enough for two micro-batches of 32 tokens.
PROMPT = " ".join(tiny_model.TEXT[:7])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


if __name__ == "__main__":
    sys.exit(unittest.main())
