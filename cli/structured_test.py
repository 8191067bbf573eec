"""generate and chat with --json-schema and --grammar, on the tiny random
model: the answer is in the grammar whatever the logits; a bad file is one
line and exit 1."""

import json
import os
import unittest

os.environ["HF_HUB_OFFLINE"] = "1"

import jsonschema

from testing import tiny_model
from testing.cli_harness import CliTestCase, run

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "n": {"type": "integer", "minimum": 1, "maximum": 9},
        "ok": {"enum": [True, None]},
    },
    "required": ["name", "n", "ok"],
    "additionalProperties": False,
}


class StructuredCliTest(CliTestCase):
    def setUp(self) -> None:
        super().setUp()
        ckpt = tiny_model.write_checkpoint(self.dir / "tiny")
        self.model = ["--checkpoint-path", str(ckpt), "--compile", "none", "--quiet"]
        self.model += ["--temperature", "1.0", "--max-new-tokens", "150"]

    def test_generate_with_a_json_schema(self):
        (self.dir / "s.json").write_text(json.dumps(SCHEMA))
        for seed in ("1", "2", "3"):
            argv = ["generate", *self.model, "--seed", seed, "--prompt", "JSON: "]
            rc, out, err = run([*argv, "--json-schema", str(self.dir / "s.json")])
            self.assertEqual(rc, 0, err)
            self.assertTrue(out.startswith("JSON: "), out)
            jsonschema.validate(json.loads(out[len("JSON: ") :]), SCHEMA)

    def test_chat_with_a_gbnf_grammar(self):
        (self.dir / "g.gbnf").write_text('root ::= "yes" | "no"\n')
        argv = ["chat", *self.model, "--seed", "4", "--grammar", str(self.dir / "g.gbnf")]
        rc, out, err = run(argv, stdin="Well?\nAgain?\n")
        self.assertEqual(rc, 0, err)
        answers = [ln.split("Assistant: ")[-1] for ln in out.splitlines() if "Assistant: " in ln]
        self.assertEqual(len(answers), 2, out)
        for a in answers:
            self.assertIn(a, ("yes", "no"))

    def test_bad_files_are_one_line(self):
        (self.dir / "bad.json").write_text('{"type": "object", "not": {}}')
        self.assert_one_line_error(
            ["generate", *self.model, "--json-schema", str(self.dir / "bad.json")],
            r"--json-schema: .*bad\.json: .*not",
        )
        (self.dir / "bad.lark").write_text("start: nowhere\n")
        self.assert_one_line_error(
            ["generate", *self.model, "--grammar", str(self.dir / "bad.lark")],
            r"--grammar: .*nowhere",
        )
        self.assert_one_line_error(
            ["generate", *self.model, "--grammar", str(self.dir / "missing.lark")],
            "cannot read",
        )


if __name__ == "__main__":
    unittest.main()
