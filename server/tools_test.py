"""Tool-call parsing: Qwen/Hermes tags and Llama 3.1 JSON, whole and streamed."""

import json
import unittest

from server import tools

HERMES = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
LLAMA = '{"name": "get_weather", "parameters": {"city": "Paris"}}'


class ParseTest(unittest.TestCase):
    def test_hermes(self):
        content, calls = tools.parse(HERMES, ["get_weather"])
        self.assertEqual(content, "Let me check.")
        self.assertEqual(
            [(c.name, json.loads(c.arguments)) for c in calls], [("get_weather", {"city": "Paris"})]
        )
        self.assertTrue(calls[0].id.startswith("call_"))

    def test_hermes_several_and_unclosed(self):
        text = (
            '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}'
        )
        _, calls = tools.parse(text, ["a", "b"])
        self.assertEqual([c.name for c in calls], ["a", "b"])

    def test_llama_json_and_python_tag(self):
        for text in (LLAMA, "<|python_tag|>" + LLAMA, LLAMA + "; " + LLAMA):
            content, calls = tools.parse(text, ["get_weather"])
            self.assertEqual(content, "")
            self.assertTrue(
                calls and all(json.loads(c.arguments) == {"city": "Paris"} for c in calls), text
            )

    def test_plain_answers_stay_answers(self):
        for text in (
            "Paris is sunny.",
            '{"name": "unknown_fn", "parameters": {}}',
            '{"answer": 42}',
            "<tool_call>not json</tool_call>",
            "{broken",
        ):
            content, calls = tools.parse(text, ["get_weather"])
            self.assertEqual((content, calls), (text, []), text)


class ClosedTest(unittest.TestCase):
    def test_objects_with_properties_are_closed_unless_they_say(self):
        schema = {
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {}}},
                "c": {"type": "object", "properties": {}, "additionalProperties": True},
                "d": {"const": {"properties": {"x": 1}}},
            },
            "$defs": {"e": {"properties": {"f": {}}}},
        }
        out = tools.closed(schema)
        self.assertIs(out["additionalProperties"], False)
        self.assertIs(out["properties"]["a"]["additionalProperties"], False)
        self.assertIs(out["properties"]["c"]["additionalProperties"], True)
        self.assertEqual(out["properties"]["d"], {"const": {"properties": {"x": 1}}})
        self.assertIs(out["$defs"]["e"]["additionalProperties"], False)
        self.assertNotIn("additionalProperties", schema)  # not changed in place


class StreamTest(unittest.TestCase):
    def stream(self, text, step=3):
        ts = tools.ToolStream(["get_weather"])
        sent = "".join(ts.push(text[i : i + step]) for i in range(0, len(text), step))
        rest, calls = ts.finish()
        return sent, rest, calls

    def test_text_before_a_call_streams_and_the_call_is_held(self):
        sent, rest, calls = self.stream(HERMES)
        self.assertEqual(sent, "Let me check.\n")
        self.assertNotIn("<", sent + rest)
        self.assertEqual([c.name for c in calls], ["get_weather"])

    def test_llama_json_is_held_whole(self):
        sent, rest, calls = self.stream(LLAMA)
        self.assertEqual((sent, rest), ("", ""))
        self.assertEqual(len(calls), 1)

    def test_plain_text_streams_through(self):
        text = "It is sunny in Paris, <tool_ is not a tag."
        sent, rest, calls = self.stream(text)
        self.assertEqual((sent + rest, calls), (text, []))
        self.assertTrue(sent)  # most of it before the end

    def test_json_answer_is_released_at_the_end(self):
        sent, rest, calls = self.stream('{"answer": 42}')
        self.assertEqual((sent, rest, calls), ("", '{"answer": 42}', []))


if __name__ == "__main__":
    unittest.main()
