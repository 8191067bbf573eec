"""Constrained decoding: the grammar a JSON Schema compiles to accepts what
the schema allows and nothing else, and a model with random logits, held to
a tool-call grammar, always writes a call that parses and fits the schema."""

import json
import tempfile
import unittest
from pathlib import Path

import torch

from server import constrain, tools
from testing import tiny_model
from torchchat import tokenizer as tok_mod
from torchchat.sampling import Sampler

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer"},
            },
            "required": ["location"],
        },
    },
}
NOTE = {
    "type": "function",
    "function": {
        "name": "note",
        "parameters": {
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "x": {}},
            "required": ["tags", "x"],
        },
    },
}


def matches(grammar, text):
    state = constrain.start(grammar)
    for ch in text:
        state = constrain.step(state, ch)
        if not state:
            return False
    return () in state


class GrammarTest(unittest.TestCase):
    def test_schema_objects(self):
        g = constrain.from_schema(WEATHER["function"]["parameters"])
        for ok in (
            '{"location": "Paris"}',
            '{"location": "P\\"a\\u00e9", "unit": "c"}',
            '{"location": "", "days": -12}',
            '{"location": "x", "unit": "f", "days": 0}',
        ):
            self.assertTrue(matches(g, ok), ok)
        for bad in (
            "{}",  # location is required
            '{"location": "0123456789abc"}',  # maxLength
            '{"unit": "c", "location": "x"}',  # the schema's order
            '{"location": "x", "unit": "k"}',  # not in the enum
            '{"location": "x", "days": 1.5}',  # an integer
            '{"location": "x", "days": 01}',
            '{"location": "x",}',
            '{"location": "x" }',
            '{"location": "a\nb"}',  # a raw control character
            '{"location": "\\x"}',  # not an escape
        ):
            self.assertFalse(matches(g, bad), bad)

    def test_any_value_and_arrays(self):
        g = constrain.from_schema(NOTE["function"]["parameters"])
        self.assertTrue(matches(g, '{"tags": [], "x": {"a": [1, 2.5e-3, true, null, "s"]}}'))
        self.assertTrue(matches(g, '{"tags": ["a", "b"], "x": false}'))
        self.assertFalse(matches(g, '{"tags": [1], "x": 1}'))
        self.assertFalse(matches(g, '{"tags": ["a"], "x": tru}'))

    def test_tool_call_formats(self):
        hermes = constrain.tool_call([WEATHER, NOTE])
        self.assertTrue(
            matches(
                hermes,
                '<tool_call>\n{"name": "note", "arguments": {"tags": [], "x": 1}}\n</tool_call>',
            )
        )
        self.assertFalse(
            matches(hermes, '<tool_call>\n{"name": "other", "arguments": {}}\n</tool_call>')
        )
        llama = constrain.tool_call([WEATHER], llama_json=True)
        self.assertTrue(matches(llama, '{"name": "get_weather", "parameters": {"location": "x"}}'))


class ConstrainedSamplingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.tok = tok_mod.load(tiny_model.write_tokenizer(Path(cls.tmp.name)))
        cls.vocab = constrain.Vocab(cls.tok, tiny_model.VOCAB)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def generate(self, grammar, sampler, seed, limit=400):
        g = torch.Generator().manual_seed(seed)
        c = constrain.Constraint(grammar, self.vocab, self.tok.eos_ids)
        ids = []
        for _ in range(limit):
            tok = c.pick(torch.randn(tiny_model.VOCAB, generator=g) * 4, sampler)
            c.advance(tok)
            if tok in self.tok.eos_ids:
                return self.tok.decode(ids)
            ids.append(tok)
        self.fail(f"no end after {limit} tokens: {self.tok.decode(ids)!r}")

    def test_random_models_always_write_a_valid_call(self):
        # Bounded strings: a random model rarely closes a string by itself.
        grammar = constrain.tool_call([WEATHER])
        greedy = Sampler(temperature=0)
        for seed in range(12):
            sampler = greedy if seed % 2 else Sampler(temperature=0.8, seed=seed)
            text = self.generate(grammar, sampler, seed)
            content, calls = tools.parse(text, ["get_weather"])
            self.assertEqual(content, "", text)
            self.assertEqual([c.name for c in calls], ["get_weather"], text)
            args = json.loads(calls[0].arguments)
            self.assertLessEqual(len(args["location"]), 12)
            self.assertIn(args.get("unit", "c"), ("c", "f"))
            self.assertIsInstance(args.get("days", 0), int)

    def test_a_token_that_fits_is_kept_as_sampled(self):
        c = constrain.Constraint(constrain.tool_call([WEATHER]), self.vocab, self.tok.eos_ids)
        lt = self.tok.encode("<")[0]
        logits = torch.zeros(tiny_model.VOCAB)
        logits[lt] = 5
        self.assertEqual(c.pick(logits, Sampler(temperature=0)), lt)
        # The best token does not fit: the best one that does is taken.
        logits = torch.zeros(tiny_model.VOCAB)
        logits[self.tok.encode("x")[0]] = 9
        logits[lt] = 3
        self.assertEqual(c.pick(logits, Sampler(temperature=0)), lt)


if __name__ == "__main__":
    unittest.main()
