"""Quality bar: each --quantize path keeps top-1 agreement >= 0.95.

Agreement is measured teacher-forced on a fixed prompt set against the
built-in model dequantized to fp32, on every position's next-token argmax.
"""

import unittest

import torch

from torchchat import quantize as Q
from torchchat import registry
from torchchat.checkpoint import load_checkpoint, load_model

# Fixed token sequences (SmolLM2 vocabulary): two chat-formatted questions,
# a paragraph of prose and a code prefix.
PROMPTS = [
    [
        1,
        9690,
        198,
        2683,
        359,
        253,
        5356,
        5646,
        11173,
        3365,
        3511,
        308,
        34519,
        28,
        7018,
        411,
        407,
        19712,
        8182,
        2,
        198,
        1,
        4093,
        198,
        4898,
        314,
        260,
        6376,
        4461,
        47,
        16374,
        357,
        288,
        253,
        3772,
        713,
        1573,
        30,
        2,
        198,
        1,
        520,
        9531,
        198,
    ],
    [
        1,
        9690,
        198,
        2683,
        359,
        253,
        19484,
        11173,
        30,
        2,
        198,
        1,
        4093,
        198,
        19161,
        253,
        421,
        30614,
        563,
        15339,
        3711,
        9027,
        281,
        260,
        5949,
        30,
        2,
        198,
        1,
        520,
        9531,
        198,
    ],
    [
        504,
        3575,
        282,
        4649,
        314,
        7042,
        30,
        657,
        314,
        1343,
        327,
        260,
        414,
        46682,
        18669,
        28,
        527,
        436,
        2837,
        281,
        216,
        33,
        40,
        40,
        41,
        327,
        260,
        2260,
        11285,
        30,
        7042,
        314,
        597,
        4248,
        327,
    ],
    [1604, 3987, 46477, 24, 94, 727, 472, 585, 304, 2067, 216, 34, 42, 448, 1003, 304, 472, 1003],
]


def top1(model):
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            logits = model(torch.tensor([p]), torch.arange(len(p)))
            out.append(logits[0].float().argmax(-1))
    return torch.cat(out)


class QuantizeQualityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ckpt = load_checkpoint(registry.model_path(registry.resolve("smollm2")))
        cls.ref = top1(load_model(cls.ckpt, torch.float32, 64, full_logits=True))

    def agreement(self, spec, dtype=torch.float32):
        model = load_model(self.ckpt, dtype, 64, full_logits=True)
        counts = Q.quantize_model(model, Q.parse(spec), self.ckpt.gguf_quantized)
        return (top1(model) == self.ref).float().mean().item(), counts

    def test_int4_from_gguf_fp32_is_exact(self):
        agree, counts = self.agreement('{"linear:int4": {"groupsize": 32}}')
        self.assertEqual(counts["int4_exact_from_gguf"], 210)
        self.assertEqual(counts["output_q8_0"], 1)  # GGUF's own Q8_0 unembedding, exact
        self.assertEqual(agree, 1.0)

    def test_int4_bf16(self):
        agree, _ = self.agreement({"linear:int4": {"groupsize": 32}}, torch.bfloat16)
        self.assertGreaterEqual(agree, 0.95)

    def test_int4_regrouping_gguf_4bit_is_refused(self):
        model = load_model(self.ckpt, torch.float32, 16)
        with self.assertRaisesRegex(Q.QuantizeError, "groupsize 32"):
            Q.quantize_model(model, {"linear:int4": {"groupsize": 64}}, self.ckpt.gguf_quantized)

    def test_int8(self):
        agree, counts = self.agreement({"linear:int8": {}})
        self.assertEqual(counts["int8"], 211)
        self.assertGreaterEqual(agree, 0.95)

    def test_embedding_int8(self):
        agree, counts = self.agreement({"embedding": {"bitwidth": 8, "groupsize": 32}})
        # The built-in GGUF's embedding is Q8_0: its own blocks are the codes.
        self.assertEqual(counts["embedding_q8_0"], 1)
        self.assertGreaterEqual(agree, 0.95)

    def test_a_q8_0_embedding_keeps_its_values(self):
        model = load_model(self.ckpt, torch.float32, 16)
        want = model.transformer.tok_embeddings.weight.detach().clone()
        spec = {"embedding": {"groupsize": 32}}
        Q.quantize_model(model, spec, self.ckpt.gguf_quantized)
        ids = torch.arange(0, want.shape[0], 97)
        self.assertTrue(torch.equal(model.transformer.tok_embeddings(ids), want[ids]))
        # Without the file's blocks it re-quantizes: close, not equal.
        model = load_model(self.ckpt, torch.float32, 16)
        model.transformer.tok_embeddings.weight.data += 1e-3
        counts = Q.quantize_model(model, spec, {})
        self.assertEqual(counts["embedding_int8"], 1)

    def test_bf16(self):
        agree, _ = self.agreement({}, torch.bfloat16)
        self.assertGreaterEqual(agree, 0.95)

    def test_bad_specs_are_rejected(self):
        for bad, msg in [
            ('{"linear:int3": {}}', "unknown scheme"),
            ('{"linear:int4": {"group": 32}}', "unknown option"),
            ('{"linear:int4": {"groupsize": 48}}', "groupsize"),
            ('{"embedding": {"bitwidth": 4}}', "bitwidth"),
            ("{not json", "invalid JSON"),
            ("[1]", "JSON object"),
        ]:
            with self.subTest(bad):
                with self.assertRaisesRegex(Q.QuantizeError, msg):
                    Q.parse(bad)


if __name__ == "__main__":
    unittest.main()
