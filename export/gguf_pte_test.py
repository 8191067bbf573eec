"""A GGUF in its own formats through every runtime: one tiny model whose
linears, embedding and output span every format the kernels run, exported
with `--quantize gguf` to a .pte (torchchat::ggml_* ExecuTorch kernels) and
by default to a .pt2; eager, both artifacts and et_run give the same greedy
ids, and ExecuTorch's kernels equal the torch op's bit for bit."""

import json
import shutil
import tempfile
import unittest
from pathlib import Path

import torch

from export import export_llm
from export.source import build_native, load_source
from kernels import et_ops
from kernels.ggml import ops
from testing import gguf_blocks, tiny_model
from testing.runners import et_run_greedy_pair
from torchchat import artifacts
from torchchat.generate import greedy
from torchchat.model import attend_filled_cache

MAX_SEQ = 64
STEPS = 20
PROMPT_IDS = [0, 57, 112, 200, 31, 7, 150, 9, 301, 3, 66, 12]
# 2 layers x 7 linears + embedding + output: every format at least once.
LAYER_NAMES = [
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
]


def every_format() -> dict:
    types = list(gguf_blocks.TYPES)
    names = ["token_embd.weight", "output.weight"] + [
        f"blk.{i}.{n}" for i in range(2) for n in LAYER_NAMES
    ]
    return {name: types[j % len(types)] for j, name in enumerate(names)}


class GgufPte(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        ckpt = tiny_model.write_checkpoint(cls.dir / "ckpt", max_seq_len=256)
        cls.tokenizer = ckpt / "tokenizer.json"
        cls.types = every_format()
        cls.gguf = gguf_blocks.write_model(cls.dir / "all.gguf", cls.types, vocab=tiny_model.VOCAB)
        cls.out = cls.dir / "out"
        cls.out.mkdir()
        cls.pte_path, cls.pt2_path = cls.out / "model.pte", cls.out / "model.pt2"
        common = ["--gguf-path", str(cls.gguf), "--tokenizer-path", str(cls.tokenizer)]
        common += ["--max-seq-length", str(MAX_SEQ), "--quiet"]
        assert (
            export_llm.main(common + ["--quantize", "gguf", "--output-pte-path", str(cls.pte_path)])
            == 0
        )
        assert export_llm.main(common + ["--output-aoti-package-path", str(cls.pt2_path)]) == 0
        source = load_source(cls.gguf, cls.tokenizer)
        model, cls.counts = build_native(source, MAX_SEQ)
        cls.eager = attend_filled_cache(model)
        with torch.no_grad():
            cls.eager_ids = greedy(cls.eager, PROMPT_IDS, STEPS)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_every_format_runs_in_its_own(self):
        used = {k.removeprefix("embedding ") for k in self.counts}
        self.assertEqual(used, set(gguf_blocks.TYPES))

    def test_pte_pt2_and_eager_give_the_same_greedy_ids(self):
        pte = artifacts.load_pte(self.pte_path)
        pt2 = artifacts.load_pt2(self.pt2_path)
        self.assertEqual(pte.metadata["methods"][et_ops.METADATA_METHOD], et_ops.OPS_VERSION)
        self.assertEqual(
            json.loads(pt2.metadata["quantize"]), {f"gguf {k}": v for k, v in self.counts.items()}
        )
        self.assertEqual(greedy(pte, PROMPT_IDS, STEPS), self.eager_ids)
        self.assertEqual(greedy(pt2, PROMPT_IDS, STEPS), self.eager_ids)

    def test_pte_logits_equal_eager_on_the_prompt(self):
        # Prefill (12 rows) runs the exact tiles in both: only attention and
        # norm arithmetic (XNNPACK, ExecuTorch's sdpa) may differ.
        pte = artifacts.load_pte(self.pte_path)
        tokens, pos = torch.tensor([PROMPT_IDS]), torch.arange(len(PROMPT_IDS))
        with torch.no_grad():
            want = self.eager(tokens, pos)
        torch.testing.assert_close(pte(tokens, pos), want, rtol=1e-4, atol=1e-4)

    def test_et_run_gives_the_same_ids(self):
        got, want = et_run_greedy_pair(
            self.pte_path, self.out / "tokenizer.json", self.eager, "Hello, my name is", STEPS
        )
        self.assertEqual(got, want)

    def test_kernels_equal_the_torch_op(self):
        # The .pte's kernels run the same code as the torch op: bit-equal
        # outputs on the one-token (int16) and the many-token (tiles) paths.
        from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
        from executorch.runtime import Runtime

        artifacts.register_et_kernels()
        for qtype in ("Q4_K", "Q6_K", "IQ4_XS", "Q5_0", "BF16"):
            raw = torch.from_numpy(gguf_blocks.random_tensor(qtype, 24, 512, seed=1))
            lin = ops.GGMLLinear(raw, qtype, 24, 512)
            m = torch.export.Dim("m", min=1, max=16)
            ep = torch.export.export(lin, (torch.randn(3, 512),), dynamic_shapes=({0: m},))
            edge = to_edge_transform_and_lower(
                ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)
            )
            path = self.dir / f"{qtype}.pte"
            path.write_bytes(edge.to_executorch().buffer)
            method = Runtime.get().load_program(str(path)).load_method("forward")
            for rows in (1, 12):
                x = torch.randn(rows, 512)
                with torch.no_grad():
                    want = lin(x)
                got = method.execute([x])[0]
                self.assertTrue(torch.equal(got, want), f"{qtype} m={rows}")


if __name__ == "__main__":
    unittest.main()
