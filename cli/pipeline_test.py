"""generate and chat --pipeline-parallel 2 on a tiny 4-layer GGUF: the text
of one process, whether the CLI starts the second rank itself or torchrun
starts both (as two one-rank nodes, the two-host recipe, on 127.0.0.1, with
a static rendezvous and with c10d's);
errors stop every rank; a rank that stops answering ends chat with one line
of error within --pipeline-timeout-s; rank 1 outlives a chat idle for longer
than its wait (rank 0's heartbeats), and gives up with one line once rank 0
stops answering."""

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
from testing.procs import CLI, alive, child_env, free_port, send, spawned

# Long enough for two micro-batches of 32 tokens.
PROMPT = " ".join(tiny_model.TEXT[:7])

TIMEOUT_S = 3


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

    def test_torchrun_c10d_two_hosts(self):
        """The two-host recipe with c10d's rendezvous: two torchrun agents
        meet at --rdzv-endpoint (the first to bind it hosts the store), and
        either may get rank 0, which prints the text."""
        rc, want, err = run(["generate", *self.model, "--prompt", PROMPT])
        self.assertEqual(rc, 0, err)
        torchrun = Path(__file__).parent / "torchrun"
        endpoint = f"127.0.0.1:{free_port()}"
        nodes = []
        for _ in range(2):
            cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1"]
            cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "c10d"]
            # The address the agents give their ranks as the master's: not
            # the hostname's, which need not be on loopback.
            cmd += ["--local-addr", "127.0.0.1"]
            cmd += ["-m", "cli", "generate", *self.model, "--quiet", "--prompt", PROMPT]
            cmd += ["--pipeline-parallel", "2"]
            nodes.append(
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        try:
            outs = [p.communicate(timeout=120) for p in nodes]
        finally:
            for p in nodes:
                p.kill()
                p.wait(30)
        for p, (_, e) in zip(nodes, outs):
            self.assertEqual(p.returncode, 0, e)
        self.assertEqual(sorted(o for o, _ in outs), ["", want])

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

    def chat_first_turn(self, timeout_s: float) -> subprocess.Popen:
        """chat --pipeline-parallel 2 in a process of its own, after its
        first turn's answer (both ranks loaded and answering)."""
        argv = ["chat", *self.model, "--quiet", "--pipeline-parallel", "2"]
        argv += ["--pipeline-timeout-s", str(timeout_s)]
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"Hello, my name is\n")
        proc.stdin.flush()
        out, deadline = b"", time.monotonic() + 180
        while b"\n" not in out.partition(b"Assistant: ")[2]:
            if time.monotonic() > deadline:
                proc.kill()
                self.fail(out)
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    self.fail(f"chat ended: {out!r} {proc.communicate()}")
                out += chunk
        return proc

    def test_stopped_rank_ends_chat(self):
        proc = self.chat_first_turn(TIMEOUT_S)
        ranks: set[int] = set()
        try:
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
                send(p, signal.SIGKILL)
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

    def test_silent_rank_0_ends_rank_1(self):
        # Rank 1 waits at most 2 + 0.5 s for rank 0's next message.
        timeout_s = 2
        proc = self.chat_first_turn(timeout_s)
        assert proc.stderr is not None
        ranks = spawned(proc.pid)
        try:
            self.assertEqual(len(ranks), 1)
            # The user thinks for 2 of rank 1's waits: rank 0's heartbeats
            # keep it serving.
            time.sleep(2 * (timeout_s + timeout_s / 4))
            self.assertEqual(alive(ranks), ranks, "rank 1 gave up on an idle chat")
            # Rank 0's host goes silent without closing its connections.
            os.kill(proc.pid, signal.SIGSTOP)
            start = time.monotonic()
            while alive(ranks) and time.monotonic() - start < timeout_s + 30:
                time.sleep(0.1)
            took = time.monotonic() - start
            self.assertEqual(alive(ranks), set(), "rank 1 waits on a silent rank 0")
            self.assertLess(took, timeout_s + 30)
        finally:
            send(proc.pid, signal.SIGKILL)
            proc.wait(30)
            for p in alive(ranks):
                send(p, signal.SIGKILL)
        # Rank 1's one line (it shares rank 0's stderr).
        err = proc.stderr.read().decode()
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[cpuinfo")]
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(
            lines[0],
            r"^torchchat: error: pipeline rank 1: nothing from rank 0 or the ranks before it "
            r"within 2.5 s \(--pipeline-timeout-s and a heartbeat\); giving up$",
        )


if __name__ == "__main__":
    sys.exit(unittest.main())
