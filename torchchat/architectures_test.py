"""Each supported architecture, token-exact against transformers.

A tiny random model of each (transformers builds it from a config with the
architecture's own switches on: Qwen3's per-head q/k norms with non-trivial
weights, Qwen2's qkv biases, Gemma's sliding windows shorter than the
prompt, soft-caps and local RoPE base, GQA everywhere) is saved as HF safetensors and
also written as a GGUF the way llama.cpp's converter lays it out (F32 and
Q8_0). Ours must give transformers' logits over a 64-token prompt and its
32 greedy ids through the static KV cache; the GGUF is checked against
transformers reading the same GGUF file with its own dequantizer, or, for an
architecture its reader lacks (smollm3), against the original model with
gguf's own quantize/dequantize applied to its weights.
"""

import json
import os
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf
import numpy as np
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from testing.tiny_archs import (
    CONFIGS,
    HF_VARIANTS,
    VOCAB,
    hf_greedy,
    hf_model,
    model_type,
    write_gguf,
)
from torchchat import quantize
from torchchat.checkpoint import CheckpointError, load_checkpoint, load_model
from torchchat.config import ConfigError
from torchchat.generate import Slot, argmax, decode
from torchchat.model import attend_filled_cache
from torchchat.slots import SlotModel

PROMPT_LEN = 64
STEPS = 32


def transformers_from_gguf(path, arch):
    # The config is the architecture's own (transformers' GGUF metadata
    # mapping reads neither the vocab size from token_embd nor Qwen3's
    # head_dim); the weights are its own reading of the file.
    m = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch], dtype=torch.float32).eval()
    sd = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=m)["tensors"]
    missing, _ = m.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=False)
    assert not [k for k in missing if "rotary" not in k], missing
    return m


# transformers' GGUF reader knows these; for the others the reference is the
# original model with each 2-D weight quantized and dequantized by gguf
# (Q8_0 blocks run along rows, so llama.cpp's row permutation of Q/K does
# not change them).
TRANSFORMERS_READS_GGUF = ("llama", "qwen2", "qwen3", "phi3")


def gguf_reference(path, arch, qtype):
    if arch in TRANSFORMERS_READS_GGUF:
        return transformers_from_gguf(path, arch)
    m = hf_model(arch)
    if qtype != "F32":
        t = gguf.GGMLQuantizationType[qtype]
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() == 2:
                    q = gguf.quants.quantize(p.numpy(), t)
                    p.copy_(torch.from_numpy(gguf.quants.dequantize(q, t)))
    return m


def ours(path):
    return attend_filled_cache(
        load_model(load_checkpoint(path), torch.float32, 128, full_logits=True)
    )


def greedy_ours(model, prompt):
    class LastPosition:
        max_seq_length = model.max_seq_length

        def __call__(self, tokens, input_pos):
            return model(tokens, input_pos)[:, -1]

    return list(decode(Slot(LastPosition()), prompt, argmax, STEPS))


def greedy_ref(ref, prompt):
    return hf_greedy(ref, torch.tensor([prompt]), STEPS)


class ArchitectureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        g = torch.Generator().manual_seed(1)
        cls.prompt = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=g).tolist()

    def check(self, model, ref, tol):
        ids = torch.tensor([self.prompt])
        with torch.inference_mode():
            a = model(ids, torch.arange(PROMPT_LEN))
            b = ref(ids).logits
            self.assertEqual(a.shape, b.shape)
            self.assertLessEqual((a - b).abs().max().item(), tol)
            self.assertEqual(greedy_ours(model, self.prompt), greedy_ref(ref, self.prompt))

    def test_hf_safetensors(self):
        for arch in [*CONFIGS, *HF_VARIANTS]:
            with self.subTest(arch):
                ref = hf_model(arch)
                d = self.tmp / f"hf-{arch}"
                ref.save_pretrained(d)
                ckpt = load_checkpoint(d)
                self.assertEqual(ckpt.config.architecture, model_type(arch))
                self.assertEqual(ckpt.config.qk_norm, arch in ("qwen3", "gemma3", "olmo2"))
                self.assertEqual(ckpt.config.pre_norms, arch != "olmo2")
                self.assertEqual(ckpt.config.rotary_dim, 12 if arch == "phi4" else None)
                self.assertEqual(ckpt.config.longrope is not None, arch == "phi4")
                self.assertEqual(ckpt.config.no_rope_layers, (3,) if arch == "smollm3" else ())
                self.check_gemma(ckpt.config, arch)
                self.check(ours(d), ref, 1e-4)

    def test_gguf(self):
        for arch in CONFIGS:
            for qtype, tol in (("F32", 1e-4), ("Q8_0", 1e-4)):
                with self.subTest(arch=arch, qtype=qtype):
                    path = write_gguf(
                        hf_model(arch), model_type(arch), self.tmp / f"{arch}-{qtype}.gguf", qtype
                    )
                    config = load_checkpoint(path).config
                    self.assertEqual(config.architecture, model_type(arch))
                    self.assertEqual(config.rotary_dim, 12 if arch == "phi4" else None)
                    self.check_gemma(config, arch)
                    self.check(ours(path), gguf_reference(path, arch, qtype), tol)

    def test_gguf_blocks_run_by_default(self):
        # A file whose layer linears are all Q4_0/Q4_1/Q8_0 runs its own
        # blocks (the q4 and q8 ops), with qwen's and gemma's q/k rows moved
        # to Meta's layout as whole rows of blocks: the same logits as the
        # dequantized weights, over the prompt (prefill) and one decode step.
        for arch, qtype, kind in (
            ("llama", "Q8_0", "q8_0_exact_from_gguf"),
            ("qwen3", "Q8_0", "q8_0_exact_from_gguf"),
            ("qwen3", "Q4_0", "int4_exact_from_gguf"),
            ("gemma3", "Q4_1", "int4_exact_from_gguf"),
        ):
            with self.subTest(arch=arch, qtype=qtype):
                path = self.tmp / f"native-{arch}-{qtype}.gguf"
                write_gguf(hf_model(arch), model_type(arch), path, qtype)
                ckpt = load_checkpoint(path)
                dense, native = ours(path), ours(path)
                spec = quantize.gguf_native_spec(native, ckpt.gguf_quantized)
                counts = quantize.quantize_model(native, spec, ckpt.gguf_quantized)
                self.assertEqual(counts[kind], 7 * ckpt.config.n_layers)
                ids = torch.tensor([self.prompt])
                nxt = torch.tensor([[self.prompt[0]]])
                with torch.inference_mode():
                    for model in (dense, native):
                        model.reset_cache()
                    a, b = (
                        dense(ids, torch.arange(PROMPT_LEN)),
                        native(ids, torch.arange(PROMPT_LEN)),
                    )
                    self.assertLessEqual((a - b).abs().max().item(), 1e-4)
                    pos = torch.tensor([PROMPT_LEN])
                    a, b = dense(nxt, pos), native(nxt, pos)
                    self.assertLessEqual((a - b).abs().max().item(), 2e-3)
        # Asked for 4 bits, a Q8_0 file gets them.
        counts = quantize.quantize_model(
            ours(path.with_name("native-qwen3-Q8_0.gguf")),
            {"linear:int4": {"groupsize": 32}},
            load_checkpoint(path.with_name("native-qwen3-Q8_0.gguf")).gguf_quantized,
        )
        self.assertEqual((counts["q8_0_exact_from_gguf"], counts["int4"]), (0, 21))

    def test_phi3_window(self):
        # Every layer's window, shorter than the test, from a GGUF too
        # (test_hf_safetensors has the config.json); the tiny phi3 past its
        # window of 256 gets it, and within it does without.
        ref = hf_model("phi3-window")
        path = write_gguf(ref, "phi3", self.tmp / "phi3-window.gguf", "F32")
        self.check_gemma(load_checkpoint(path).config, "phi3-window")
        self.check(ours(path), ref, 1e-4)
        d = self.tmp / "phi3-past-window"
        past = hf_model("phi3")
        # A context of 512 around a window of 256 (--max-seq-length never
        # exceeds what the model supports).
        past.config.max_position_embeddings, past.config.sliding_window = 512, 256
        past.save_pretrained(d)
        for length, window in ((256, None), (300, 256)):
            model = load_model(load_checkpoint(d), torch.float32, length)
            rule = getattr(model.transformer.layers[2].attention.SDPA, "rule", None)
            self.assertEqual(getattr(rule, "window", None), window)

    def test_longrope_long_factors(self):
        # A context past the original one (256) rotates with the long
        # factors: transformers does so for a 300-token sequence.
        ref = hf_model("phi4")
        d = self.tmp / "phi4-long"
        ref.save_pretrained(d)
        prompt = torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            want = ref(prompt[None]).logits
        for path in (d, write_gguf(ref, "phi3", self.tmp / "phi4-long.gguf", "F32")):
            with self.subTest(str(path)):
                model = load_model(load_checkpoint(path), torch.float32, 512, full_logits=True)
                with torch.inference_mode():
                    got = attend_filled_cache(model)(prompt[None], torch.arange(300))
                self.assertLessEqual((got - want).abs().max().item(), 1e-4)

    def test_gemma_slots(self):
        # The server's batched forward (eager per-slot SDPA, and the masked
        # one a --slots .pt2 traces) keeps each layer's window and caps: two
        # sequences longer than the window, in two steps, give what each
        # gives alone.
        g = torch.Generator().manual_seed(3)
        a = torch.randint(0, VOCAB, (40,), generator=g).tolist()
        b = torch.randint(0, VOCAB, (30,), generator=g).tolist()
        for arch in ("gemma2", "gemma3"):
            d = self.tmp / f"slots-{arch}"
            hf_model(arch).save_pretrained(d)
            ckpt = load_checkpoint(d)
            alone = attend_filled_cache(load_model(ckpt, torch.float32, 64))
            with torch.inference_mode():
                want = [alone(torch.tensor([a]), torch.arange(40))[0]]
                alone.reset_cache()
                want.append(alone(torch.tensor([b]), torch.arange(30))[0])
            for traceable in (False, True):
                with self.subTest(arch=arch, traceable=traceable):
                    model = SlotModel(load_model(ckpt, torch.float32, 64), 2, traceable)
                    with torch.inference_mode():
                        model.forward_slots([(0, a[:20], 0), (1, b[:10], 0)])
                        got = model.forward_slots([(0, a[20:], 20), (1, b[10:], 10)])
                    for i in (0, 1):
                        self.assertLessEqual((got[i] - want[i]).abs().max().item(), 1e-5)

    def test_gemma3_multimodal(self):
        # Gemma 3 4B and up: the text model inside Gemma3ForConditionalGeneration,
        # its vision tower left out; a text-only prompt gives the same logits.
        text = CONFIGS["gemma3"]
        vision = transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        torch.manual_seed(0)
        ref = transformers.Gemma3ForConditionalGeneration(
            transformers.Gemma3Config(
                text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4
            )
        ).eval()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.3)
        d = self.tmp / "gemma3-mm"
        ref.save_pretrained(d)
        config = load_checkpoint(d).config
        self.check_gemma(config, "gemma3")
        self.check(ours(d), ref, 1e-4)

    def check_gemma(self, config, arch):
        """The switches read from config.json and from llama.cpp's keys and
        defaults; the tests above then fail on any of them computed wrong
        (each was broken once: window off by one, cap, local RoPE base,
        linear scaling, (1 + w), post norms, √dim, GELU, query scale)."""
        want = {
            "gemma2": ((0, 2), 0.1, 0.5, None),
            "gemma2-scaled": ((0, 2), 0.1, 0.5, 24**-0.5),
            "gemma3": ((0, 1, 2, 3, 4), None, None, None),
            "mistral": ((0, 1, 2), None, None, None),
            "phi3": ((0, 1, 2), None, None, None),
            "phi3-window": ((0, 1, 2), None, None, None),
            "phi4": ((0, 1, 2), None, None, None),
        }.get(arch, ((), None, None, None))
        # A GGUF holds the caps as float32.
        caps = tuple(
            None if x is None else round(x, 6) for x in (config.attn_softcap, config.final_softcap)
        )
        got = (tuple(config.window_layers), *caps, config.attn_scale)
        self.assertEqual(got, want)
        self.assertEqual(config.local_rope_theta, 1e4 if arch == "gemma3" else None)

    def test_unsupported_is_one_clear_error(self):
        d = self.tmp / "moe"
        hf_model("qwen3").save_pretrained(d)
        cfg = (d / "config.json").read_text().replace('"qwen3"', '"qwen3_moe"')
        (d / "config.json").write_text(cfg)
        with self.assertRaisesRegex(ConfigError, "model_type 'qwen3_moe' is not supported"):
            load_checkpoint(d)
        d = self.tmp / "phi4"
        hf_model("phi3").save_pretrained(d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["partial_rotary_factor"] = 0.7
        (d / "config.json").write_text(json.dumps(cfg))
        with self.assertRaisesRegex(ConfigError, "partial_rotary_factor 0.7 gives 11 rotary dims"):
            load_checkpoint(d)
        cfg["partial_rotary_factor"] = 1.0
        cfg["rope_scaling"] = {
            "rope_type": "longrope",
            "short_factor": [1.0] * 5,
            "long_factor": [1.0] * 8,
        }
        cfg.pop("rope_parameters", None)
        (d / "config.json").write_text(json.dumps(cfg))
        with self.assertRaisesRegex(ConfigError, "short_factor has 5 values; 8 are needed"):
            load_checkpoint(d)
        # Past the original context LongRoPE needs its long factors.
        d = self.tmp / "phi4-no-long"
        hf_model("phi4").save_pretrained(d)
        ckpt = load_checkpoint(d)
        ckpt.config.longrope["long_factor"] = []
        with self.assertRaisesRegex(
            ConfigError, "exceeds the model's original_max_position_embeddings 256 and it has no"
        ):
            load_model(ckpt, torch.float32, 300)

        # Gemma switches we do not compute, each named.
        d = self.tmp / "gemma3-bad"
        hf_model("gemma3").save_pretrained(d)
        good = json.loads((d / "config.json").read_text())
        for change, message in (
            ({"hidden_activation": "gelu"}, "hidden_activation 'gelu' is not supported"),
            ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
            ({"layer_types": ["chunked_attention"] * 6}, r"layer_types \['chunked_attention'\]"),
        ):
            (d / "config.json").write_text(json.dumps({**good, **change}))
            with self.assertRaisesRegex(ConfigError, message):
                load_checkpoint(d)

        # OLMo 3's windowed layers, as a GGUF olmo2 states them.
        olmo3 = hf_model("olmo2")
        olmo3.config.sliding_window = 16
        path = write_gguf(olmo3, "olmo2", self.tmp / "olmo3.gguf", "F32")
        with self.assertRaisesRegex(
            CheckpointError, r"olmo2 with attention.sliding_window \(OLMo 3\)"
        ):
            load_checkpoint(path)

        path = self.tmp / "gemma3n.gguf"
        w = gguf.GGUFWriter(str(path), "gemma3n")
        w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with self.assertRaisesRegex(
            CheckpointError, "GGUF architecture 'gemma3n' is not supported"
        ):
            load_checkpoint(path)


if __name__ == "__main__":
    unittest.main()
