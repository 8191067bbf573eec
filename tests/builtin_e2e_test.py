"""Slow: the built-in SmolLM2-135M end to end, as the README runs it.

The .pte is //tests:builtin_pte (export_llm's command line with the README's
own arguments, run once per build and shared with readme_examples_test); the
.pt2 is exported here through export_llm's command line. Then each runtime
is asked the same question: eager-style loaders in Python
(torchchat.artifacts), aoti_run and et_run in chat mode, and ExecuTorch's own
TextLLMRunner on our .pte, and the C example built with plain cc and
pkg-config from the torchchat-et package. Greedy ids must also agree between
the eager model, aoti_run and et_run.
"""

import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import unittest
from pathlib import Path

import torch

from export import export_llm
from export.source import build, checkpoint_of, load_source
from testing.runners import run_ids
from torchchat import artifacts, loading
from torchchat.generate import greedy

RUNFILES = Path(os.environ["TEST_SRCDIR"]) / "_main"
AOTI_RUN = RUNFILES / "runner" / "aoti" / "aoti_run"
ET_RUN = RUNFILES / "runner" / "et" / "et_run"
ET_DIST = RUNFILES / "runner" / "c_api" / "torchchat-et.tar.gz"
BUILTIN_PTE = RUNFILES / "tests" / "builtin" / "model.pte"
MAX_SEQ = 256  # the .pte's (the README's --max-seq-length)
QUESTION = "What is the capital of France?"
COMPLETION = "The capital of France is"
STEPS = 12


class BuiltinModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        cls.pte = BUILTIN_PTE
        cls.pt2 = cls.dir / "pt2" / "model.pt2"
        cls.pt2.parent.mkdir()
        rc = export_llm.main(
            [
                "--output-aoti-package-path",
                str(cls.pt2),
                "--max-seq-length",
                str(MAX_SEQ),
                # fp32 like eager below; by default a .pt2 keeps the GGUF's codes.
                "--dtype",
                "fp32",
            ]
        )
        assert rc == 0, "export_llm failed"

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_python_loaders_answer(self):
        from torchchat import tokenizer as tok_mod

        for path in (self.pte, self.pt2):
            model = artifacts.load(path)
            tok = tok_mod.load(model.tokenizer_path, bos_id=model.bos_id, eos_ids=model.eos_ids)
            self.assertTrue(tok.chat_template, "tokenizer_config.json lost the chat template")
            prompt = tok.template().render([{"role": "user", "content": QUESTION}])
            text = tok.decode(greedy(model, tok.encode(prompt), 40, set(model.eos_ids)))
            self.assertIn("Paris", text, f"{path.name}: {text!r}")

    def test_runners_chat(self):
        for binary, model in ((AOTI_RUN, self.pt2), (ET_RUN, self.pte)):
            p = subprocess.run(
                [str(binary), str(model), "-m", "chat", "-t", "0", "-n", "40"],
                input=QUESTION + "\n",
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("Paris", p.stdout, f"{binary.name}: {p.stdout!r}")

    def test_c_program_from_the_package(self):
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(ET_DIST) as t:
                t.extractall(tmp, filter="tar")
            prefix = Path(tmp) / "torchchat-et"
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig"),
            }
            flags = subprocess.run(
                ["pkg-config", "--cflags", "--libs", "torchchat-et"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            exe = Path(tmp) / "generate"
            subprocess.run(
                [
                    "cc",
                    str(prefix / "share/torchchat/examples/generate.c"),
                    *shlex.split(flags),
                    "-o",
                    str(exe),
                ],
                env=env,
                check=True,
            )
            p = subprocess.run(
                [str(exe), str(self.pte), COMPLETION, "8"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("Paris", p.stdout)

    def test_greedy_ids_agree_with_eager(self):
        import llm_tokenizers

        source = load_source(checkpoint_of(loading.LoadOptions()))
        eager = build(source, "fp32", MAX_SEQ)
        tok = llm_tokenizers.load(str(self.pte.parent / "tokenizer.json"))
        prompt = tok.encode(COMPLETION, bos=tok.add_bos)
        with torch.no_grad():
            want = greedy(eager, prompt, STEPS, set(tok.eos_ids))
        self.assertTrue(want)
        for binary, model in ((AOTI_RUN, self.pt2), (ET_RUN, self.pte)):
            p, got = run_ids(binary, model, "-i", COMPLETION, "-n", str(STEPS), "-t", "0")
            self.assertEqual(p.returncode, 0, p.stderr)
            assert got is not None
            self.assertEqual(got[: len(want)], want, binary.name)

    def test_executorch_text_runner(self):
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        artifacts.register_et_kernels()
        runner = TextLLMRunner(str(self.pte), str(self.pte.parent / "tokenizer.json"))
        pieces = []
        prompt = "<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
        config = GenerationConfig(echo=False, max_new_tokens=24, temperature=0.0)
        runner.generate(prompt, config, pieces.append)
        self.assertIn("Paris", "".join(pieces))


if __name__ == "__main__":
    unittest.main()
