"""A tiny random Llama through both exports, checked against eager.

One export of each kind (about 40 s together on 2 cores) serves every test.
"""

import json
import shutil
import tempfile
import unittest
from pathlib import Path

import torch

from export import pt2, pte
from export.source import build, load_source
from testing import tiny_model
from torchchat import artifacts
from torchchat.generate import greedy

MAX_SEQ = 64
PROMPT = "Hello, my name is"
STEPS = 32


class ExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from tokenizers import Tokenizer

        cls.dir = Path(tempfile.mkdtemp())
        ckpt = tiny_model.write_checkpoint(cls.dir / "ckpt", max_seq_len=256)
        cls.out = cls.dir / "out"
        cls.out.mkdir()
        cls.source = load_source(ckpt)
        cls.tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        cls.prompt_ids = cls.tok.encode(PROMPT).ids
        cls.eager = build(cls.source, "fp32", MAX_SEQ)
        with torch.no_grad():
            cls.eager_tokens = greedy(cls.eager, cls.prompt_ids, STEPS)
        # EOS = the first token greedy decoding produces for the first time
        # at step >= 3, so ExecuTorch's runner has a known place to stop.
        cls.eos_step = next(
            i for i in range(3, STEPS) if cls.eager_tokens[i] not in cls.eager_tokens[:i]
        )
        cls.source.eos_ids = [cls.eager_tokens[cls.eos_step]]

        cls.pte_path = cls.out / "model.pte"
        cls.pt2_path = cls.out / "model.pt2"
        pte.export_model(
            build(cls.source, "fp32", MAX_SEQ),
            cls.source,
            cls.pte_path,
            {},
            "fp32",
            MAX_SEQ,
        )
        from export import tokenizer_files

        tf = tokenizer_files.write(
            cls.out,
            cls.source.tokenizer_path,
            cls.source.chat_template,
            cls.source.bos_token,
            cls.source.eos_token,
        )
        meta = pt2.metadata(cls.source, MAX_SEQ, "fp32", tf.file_name, tf.kind, "")
        pt2.export_model(
            build(cls.source, "fp32", MAX_SEQ),
            cls.source,
            cls.pt2_path,
            {},
            "fp32",
            MAX_SEQ,
            meta,
        )
        cls.pte = artifacts.load_pte(cls.pte_path)
        cls.pt2 = artifacts.load_pt2(cls.pt2_path)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_pte_has_every_runner_method(self):
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(self.pte_path))
        values = {n: list(program.load_method(n).execute([])) for n in artifacts.PTE_METHODS}
        self.assertEqual(
            values,
            {
                "get_max_seq_len": [MAX_SEQ],
                "get_max_context_len": [MAX_SEQ],
                "get_n_layers": [2],
                "get_vocab_size": [tiny_model.VOCAB],
                "use_kv_cache": [True],
                "use_sdpa_with_kv_cache": [True],
                "enable_dynamic_shape": [True],
                "get_bos_id": [self.tok.token_to_id(tiny_model.BOS)],
                "get_eos_ids": [self.eager_tokens[self.eos_step]],
            },
        )

    def test_pte_uses_llama_cache_and_attention_ops(self):
        # ExecuTorch's flow by default: the KV cache and attention run as
        # llama:: ops (et_run's kernels: //kernels:et_llama_ops).
        from torchchat.executorch_compat import deserialize_pte_binary

        program = deserialize_pte_binary(self.pte_path.read_bytes())
        program = getattr(program, "program", program)
        ops = {op.name for plan in program.execution_plan for op in plan.operators}
        self.assertLessEqual({"llama::custom_sdpa", "llama::update_cache"}, ops)

    def _check_logits(self, model, atol):
        self.eager.reset_cache()
        steps = [
            (self.prompt_ids, 0),
            ([7], len(self.prompt_ids)),
            ([42], len(self.prompt_ids) + 1),
        ]
        for ids, start in steps:
            tokens = torch.tensor([ids])
            pos = torch.arange(start, start + len(ids))
            with torch.no_grad():
                want = self.eager(tokens, pos)
            got = model(tokens, pos)
            self.assertEqual(tuple(got.shape), (1, tiny_model.VOCAB))
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)

    def test_pte_logits_match_eager(self):
        self._check_logits(self.pte, 1e-4)

    def test_pt2_logits_match_eager(self):
        self._check_logits(self.pt2, 1e-4)

    def test_pt2_metadata_round_trips(self):
        m = self.pt2.metadata
        self.assertEqual(m["max_seq_len"], MAX_SEQ)
        self.assertEqual(m["vocab_size"], tiny_model.VOCAB)
        self.assertEqual(m["n_layers"], 2)
        self.assertEqual(m["bos_id"], self.tok.token_to_id(tiny_model.BOS))
        self.assertEqual(m["eos_ids"], [self.eager_tokens[self.eos_step]])
        self.assertEqual(
            (m["tokenizer_file"], m["tokenizer_type"], m["dtype"]),
            ("tokenizer.json", "hf_json", "fp32"),
        )
        self.assertEqual(self.pt2.tokenizer_path, self.out / "tokenizer.json")
        self.assertTrue(m["AOTI_CPU_ISA"])

    def test_same_greedy_tokens_eager_pte_pt2(self):
        self.assertEqual(greedy(self.pte, self.prompt_ids, STEPS), self.eager_tokens)
        self.assertEqual(greedy(self.pt2, self.prompt_ids, STEPS), self.eager_tokens)

    def test_executorch_text_runner_generates_and_stops_at_eos(self):
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        runner = TextLLMRunner(str(self.pte_path), str(self.out / "tokenizer.json"))
        pieces, stats = [], []
        config = GenerationConfig(echo=False, max_new_tokens=STEPS, temperature=0.0)
        runner.generate(PROMPT, config, pieces.append, stats.append)
        before_eos = self.eager_tokens[: self.eos_step]
        text = "".join(pieces)
        eos_text = self.tok.decode([self.eager_tokens[self.eos_step]], skip_special_tokens=False)
        self.assertIn(
            text,
            (
                self.tok.decode(before_eos, skip_special_tokens=False),
                self.tok.decode(before_eos, skip_special_tokens=False) + eos_text,
            ),
        )
        self.assertLessEqual(stats[-1].num_generated_tokens, self.eos_step + 1)

    def test_tokenizer_written_beside_the_artifacts(self):
        self.assertEqual(
            (self.out / "tokenizer.json").read_bytes(),
            (self.dir / "ckpt" / "tokenizer.json").read_bytes(),
        )
        config = json.loads((self.out / "tokenizer_config.json").read_text())
        self.assertIn("assistant", config["chat_template"])
        self.assertEqual(
            (config["bos_token"], config["eos_token"]), (tiny_model.BOS, tiny_model.EOS)
        )

    def test_tiktoken_sidecar_travels_with_the_tokenizer(self):
        import base64

        import llm_tokenizers
        from export import tokenizer_files

        src = self.dir / "tok" / "qwen.tiktoken"
        src.parent.mkdir(exist_ok=True)
        src.write_text(
            "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
        )
        options = {
            "pat_str": r"\p{L}+|\s+|.",
            "special_tokens": {"<|im_end|>": 300},
            "eos": ["<|im_end|>"],
        }
        (src.parent / "qwen.tiktoken.json").write_text(json.dumps(options))
        self.assertEqual(
            tokenizer_files.planned_names(src),
            ["tokenizer.model", "tokenizer_config.json", "tokenizer.model.json"],
        )
        out = self.dir / "tok_out"
        out.mkdir(exist_ok=True)
        tf = tokenizer_files.write(out, src, None, "", "<|im_end|>")
        self.assertEqual((tf.file_name, tf.kind), ("tokenizer.model", "tiktoken"))
        self.assertIn(out / "tokenizer.model.json", tf.written)
        tok = llm_tokenizers.load(str(out / "tokenizer.model"))
        self.assertEqual(tok.eos_ids, [300])
        self.assertEqual(tok.encode("ab<|im_end|>"), [97, 98, 300])

    def test_isa_mismatch_is_refused_before_loading(self):
        meta = artifacts.read_pt2_metadata(self.pt2_path)
        artifacts.check_cpu_isa(meta, self.pt2_path)  # this host exported it
        meta["AOTI_CPU_ISA"] = "AVX512 NOT_A_REAL_ISA"
        with self.assertRaisesRegex(artifacts.ArtifactError, "lacks NOT_A_REAL_ISA"):
            artifacts.check_cpu_isa(meta, self.pt2_path)


if __name__ == "__main__":
    unittest.main()
