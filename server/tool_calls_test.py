"""Tool calls round-trip through the openai client: the tools reach the chat
template, a `<tool_call>` reply comes back as tool_calls, and the tool's
result goes back into the next prompt.

The model is scripted (it writes a fixed reply for what its prompt holds)
and batch-1, so this also runs the path a .pte or .pt2 takes: one slot.
"""

import json
import tempfile
import unittest
from pathlib import Path

import openai
import torch

from server.app import Config
from server.engine import serial_engine
from server.harness import Running
from testing import tiny_model
from torchchat import tokenizer as tok_mod

# Renders tools and tool calls; the generation prompt ends with the bos
# token, so the scripted model knows where its reply starts.
TEMPLATE = (
    "{% if tools %}tools: {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>{% endif %}"
)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def reply_for(context):
    if "tool: " in context:  # a tool result came back
        return "It is sunny in Paris." if "sunny" in context else "no result?"
    if "tools: get_weather" in context and "call get_weather" not in context:
        return "Let me look. " + CALL
    return "I have no tools."


class ScriptedModel:
    """Batch-1 LLMModel: favours the next token of reply_for(its prompt)."""

    max_seq_length = 256
    vocab_size = tiny_model.VOCAB

    def __init__(self, tok):
        self.tok = tok
        self.bos = tok.encode(tiny_model.BOS)[0]
        self.eos = tok.encode(tiny_model.EOS)[0]
        self.seq = []

    def __call__(self, tokens, input_pos):
        del self.seq[int(input_pos[0]) :]
        self.seq.extend(tokens.reshape(-1).tolist())
        start = len(self.seq) - self.seq[::-1].index(self.bos)
        reply = self.tok.encode(reply_for(self.tok.decode(self.seq[: start - 1])))
        reply.append(self.eos)
        done = len(self.seq) - start
        logits = torch.zeros(1, self.vocab_size)
        logits[0, reply[done] if done < len(reply) else self.eos] = 10.0
        return logits


class ToolCallsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        path = tiny_model.write_tokenizer(Path(cls.tmp.name))
        tok = tok_mod.load(path, chat_template=TEMPLATE)
        model = ScriptedModel(tok)
        engine = serial_engine(model, tok, max_queue=4)
        config = Config("scripted", model.max_seq_length, model.vocab_size, 200, 100)
        cls.server = Running(engine, config)
        cls.client = openai.OpenAI(base_url=cls.server.base_url, api_key="x", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.tmp.cleanup()

    def ask(self, messages, **kw):
        return self.client.chat.completions.create(
            model="scripted", messages=messages, temperature=0, **kw
        )

    def test_round_trip(self):
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        r = self.ask(messages, tools=[WEATHER_TOOL])
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertEqual(choice.message.content, "Let me look.")
        (call,) = choice.message.tool_calls
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"})
        r = self.ask(messages, tools=[WEATHER_TOOL])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].message.content, "It is sunny in Paris.")
        self.assertIsNone(r.choices[0].message.tool_calls)

    def test_streamed_tool_call(self):
        chunks = list(
            self.ask([{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual(text.strip(), "Let me look.")  # the tag never streams as text
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual([tc.function.name for tc in calls], ["get_weather"])
        self.assertEqual(json.loads(calls[0].function.arguments), {"city": "Paris"})
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")

    def test_without_tools_or_with_tool_choice_none_it_is_text(self):
        r = self.ask([{"role": "user", "content": "Weather?"}])
        self.assertEqual(r.choices[0].message.content, "I have no tools.")
        r = self.ask(
            [{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], tool_choice="none"
        )
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsNone(r.choices[0].message.tool_calls)


if __name__ == "__main__":
    unittest.main()
