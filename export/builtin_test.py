"""Slow: the built-in SmolLM2-135M exported both ways writes coherent text.

Runs the real command line (what a user types), then generates from each
artifact through export.artifacts and from the .pte through ExecuTorch's
own TextLLMRunner.
"""

import shutil
import tempfile
import unittest
from pathlib import Path

import torch

from export import export_llm
from torchchat import artifacts

MAX_SEQ = 128
QUESTION = "What is the capital of France?"


def greedy(forward, ids, steps, eos_ids):
    logits = forward(torch.tensor([ids]), torch.arange(len(ids)))
    out, pos = [], len(ids)
    for _ in range(steps):
        t = int(logits.argmax(-1))
        if t in eos_ids:
            break
        out.append(t)
        logits = forward(torch.tensor([[t]]), torch.tensor([pos]))
        pos += 1
    return out


class BuiltinModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        cls.pte = cls.dir / "pte" / "model.pte"
        cls.pt2 = cls.dir / "pt2" / "model.pt2"
        cls.pte.parent.mkdir()
        cls.pt2.parent.mkdir()
        rc = export_llm.main(["--output-pte-path", str(cls.pte), "--output-aoti-package-path",
                              str(cls.pt2), "--max-seq-length", str(MAX_SEQ)])
        assert rc == 0, "export_llm failed"

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def generate(self, model):
        from torchchat import tokenizer as tok_mod

        tok = tok_mod.load(model.tokenizer_path, bos_id=model.bos_id, eos_ids=model.eos_ids)
        self.assertTrue(tok.chat_template, "tokenizer_config.json lost the chat template")
        prompt = tok.template().render([{"role": "user", "content": QUESTION}])
        ids = tok.encode(prompt)
        return tok.decode(greedy(model, ids, 40, set(model.eos_ids)))

    def test_pte_and_pt2_answer_coherently(self):
        for path in (self.pte, self.pt2):
            text = self.generate(artifacts.load(path))
            self.assertIn("Paris", text, f"{path.name}: {text!r}")

    def test_executorch_text_runner(self):
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        artifacts.register_et_kernels()
        runner = TextLLMRunner(str(self.pte), str(self.pte.parent / "tokenizer.json"))
        pieces = []
        prompt = ("<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
        config = GenerationConfig(echo=False, max_new_tokens=24, temperature=0.0)
        runner.generate(prompt, config, pieces.append)
        self.assertIn("Paris", "".join(pieces))


if __name__ == "__main__":
    unittest.main()
