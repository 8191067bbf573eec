"""The architecture table is the one place that names an architecture: the
readers and the model definition look entries up and never name one."""

from __future__ import annotations

import ast
import unittest
from pathlib import Path

from torchchat import architectures
from torchchat.config import ConfigError, ModelConfig

HERE = Path(__file__).resolve().parent
# The modules that read checkpoints and build the network from them.
READERS = (
    "config.py",
    "model.py",
    "blocks.py",
    "attention.py",
    "rope.py",
    "slots.py",
    "checkpoint/base.py",
    "checkpoint/build.py",
    "checkpoint/gguf.py",
    "checkpoint/hf.py",
    "checkpoint/meta.py",
)
# Gemma 3's multimodal checkpoint wraps a text model: its wrapper type and
# the text model's type it writes are not an architecture of the table.
ALLOWED = {("checkpoint/hf.py", "gemma3"), ("checkpoint/hf.py", "gemma3_text")}


def names() -> set[str]:
    out = set()
    for a in architectures.ARCHITECTURES:
        out.add(a.name)
        out.update(a.hf_types)
    return out


def named_in(path: Path) -> set[str]:
    """String constants of a module that are architecture names (docstrings
    and comments are prose, not code)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = set()
    every = names()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and node.value in every:
                found.add(node.value)
    return found


class TableTest(unittest.TestCase):
    def test_readers_name_no_architecture(self):
        for rel in READERS:
            with self.subTest(module=rel):
                found = {n for n in named_in(HERE / rel) if (rel, n) not in ALLOWED}
                self.assertEqual(found, set(), f"{rel} names {sorted(found)}; add a table field")

    def test_entries_are_unique_and_reachable(self):
        table = architectures.ARCHITECTURES
        self.assertEqual(len({a.name for a in table}), len(table))
        hf = [t for a in table for t in a.hf_types]
        self.assertEqual(len(set(hf)), len(hf))
        for a in table:
            self.assertIs(architectures.architecture(a.name), a)
            for t in a.hf_types:
                self.assertIs(architectures.from_hf_type(t), a)
            if a.gguf:
                self.assertIs(architectures.from_gguf_name(a.name), a)

    def test_unknown_names_get_one_line(self):
        with self.assertRaisesRegex(ConfigError, r"model_type 'mamba' is not supported \(llama"):
            ModelConfig.from_hf({"model_type": "mamba"})
        with self.assertRaisesRegex(ValueError, "GGUF architecture 'mistral' is not supported"):
            architectures.from_gguf_name("mistral")
        with self.assertRaisesRegex(ValueError, "GGUF architecture 7 is not supported"):
            architectures.from_gguf_name(7)

    def test_hf_configs_take_the_entry_switches(self):
        """Each entry's switches reach the config from_hf builds."""
        base = {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 6,
            "vocab_size": 100,
            "intermediate_size": 128,
            "sliding_window": 16,
        }
        for a in architectures.ARCHITECTURES:
            for t in a.hf_types:
                with self.subTest(model_type=t):
                    c = ModelConfig.from_hf({**base, "model_type": t})
                    self.assertEqual(c.architecture, a.name)
                    self.assertEqual(c.qk_norm, a.qk_norm)
                    self.assertEqual(c.qk_norm_heads, a.qk_norm_all_heads)
                    self.assertEqual(c.qkv_bias, a.qkv_bias)
                    self.assertEqual(c.post_norms, a.gemma or a.post_norms_only)
                    self.assertEqual(c.pre_norms, not a.post_norms_only)
                    self.assertEqual(c.norm_unit_offset, a.gemma)
                    self.assertEqual(bool(c.window_layers), bool(a.window))
                    self.assertEqual(c.local_rope_theta is not None, a.local_rope)
                    every = a.no_rope_every
                    self.assertEqual(c.no_rope_layers, (3,) if every else ())


if __name__ == "__main__":
    unittest.main()
