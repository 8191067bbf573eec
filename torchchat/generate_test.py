"""The Python generation core on a scripted model: decode()'s stop rules and
Stats, Slot's cache reuse, and ChatSession's policy (the same as
runner/common/chat_session_test.cc checks for C++)."""

import os
import struct
import tempfile
import unittest

import torch

from torchchat import tokenizer as tok_mod
from torchchat.generate import (
    ChatSession,
    ContextOverflow,
    Slot,
    Stats,
    argmax,
    decode,
    generate_text,
    greedy,
)

# A llama2c tokenizer.bin: <unk> <s> </s>, the 256 byte tokens, then a-d.
VOCAB = 3 + 256 + 4
A, B, C, D = 259, 260, 261, 262
EOS = 2

# runner/common/chat_session_test.cc's template: a past reply renders as
# the generation prompt ("c") plus its text.
TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' %}c{{ m.content }}d"
    "{% else %}{{ m.content }}d{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}c{% endif %}"
)


def write_tokenizer(path):
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list("abcd")
    with open(path, "wb") as f:
        f.write(struct.pack("<i", 6))
        for p in pieces:
            data = p.encode()
            f.write(struct.pack("<fi", 0.0, len(data)) + data)


class ScriptedModel:
    """After position p it favours script[p % len]; records every call."""

    def __init__(self, script, max_seq_length):
        self.script, self.max_seq_length, self.calls = script, max_seq_length, []

    def __call__(self, tokens, input_pos):
        self.calls.append((int(input_pos[0]), tokens.shape[1]))
        logits = torch.zeros(1, VOCAB)
        logits[0, self.script[int(input_pos[-1]) % len(self.script)]] = 10.0
        return logits


class GenerateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        path = os.path.join(tempfile.mkdtemp(), "tok.bin")
        write_tokenizer(path)
        cls.tok = tok_mod.load(path, chat_template=TEMPLATE, eos_ids=(EOS,))

    def test_decode_stops_at_eos_and_counts_it(self):
        model = ScriptedModel([0, 0, C, D, EOS], 32)
        stats = Stats()
        out = list(decode(Slot(model), [1, A, B], argmax, 10, (EOS,), stats))
        self.assertEqual(out, [C, D, EOS])
        self.assertEqual((stats.num_prompt_tokens, stats.num_generated_tokens), (3, 3))
        self.assertEqual(stats.stop_reason, "eos")
        self.assertEqual(model.calls[0], (0, 3))  # one prefill call
        self.assertEqual(
            greedy(ScriptedModel([0, 0, C, D, EOS], 32), [1, A, B], 10, (EOS,)), [C, D]
        )

    def test_decode_stops_when_the_context_is_full(self):
        model = ScriptedModel([A], 6)
        stats = Stats()
        out = list(decode(Slot(model), [1, A, B], argmax, 10, (), stats))
        self.assertEqual(len(out), 4)  # 3 prompt + 3 decode positions, 4th needs none
        self.assertEqual(stats.stop_reason, "context")
        self.assertTrue(all(pos + n <= 6 for pos, n in model.calls))

    def test_a_consumer_may_stop_early(self):
        stats = Stats()
        it = decode(Slot(ScriptedModel([A], 32)), [1, A], argmax, 10, (), stats)
        next(it)
        it.close()
        self.assertEqual(stats.num_generated_tokens, 1)
        self.assertGreater(stats.inference_end_ms, 0)

    def test_a_prompt_that_extends_the_cache_prefills_only_its_suffix(self):
        model = ScriptedModel([A], 32)
        slot = Slot(model)
        list(decode(slot, [1, B, C], argmax, 3))
        self.assertEqual(slot.tokens, [1, B, C, A, A])
        model.calls.clear()
        stats = Stats()
        list(decode(slot, [1, B, C, A, A, A, D], argmax, 3, stats=stats))
        self.assertEqual(model.calls[0], (5, 2))
        self.assertEqual(stats.num_prompt_tokens, 2)

    def test_prompt_longer_than_context(self):
        with self.assertRaisesRegex(ContextOverflow, "context holds 4"):
            list(decode(Slot(ScriptedModel([A], 4)), [1, A, B, C, D], argmax, 1))

    def test_generate_text_streams_and_hides_the_stop_token(self):
        pieces = []
        reply = generate_text(
            Slot(ScriptedModel([0, 0, C, D, EOS], 32)),
            self.tok,
            [1, A, B],
            argmax,
            10,
            pieces.append,
        )
        self.assertEqual(reply.ids, [C, D])
        self.assertEqual(reply.text, "cd")
        self.assertEqual("".join(pieces), "cd")

    def test_on_text_returning_true_ends_the_reply(self):
        model = ScriptedModel([A, B, C, D], 32)
        reply = generate_text(Slot(model), self.tok, [1, A], argmax, 10, lambda t: t == "c")
        self.assertEqual((reply.ids, reply.text), ([B, C], "bc"))
        self.assertEqual(reply.stats.stop_reason, "stopped")
        self.assertEqual(reply.stats.num_generated_tokens, 2)
        self.assertGreater(reply.stats.inference_end_ms, 0)
        self.assertEqual(len(model.calls), 2)  # the prefill and one step: none after the stop

    def test_later_chat_turns_prefill_only_the_new_turn(self):
        model = ScriptedModel([A], 64)
        session = ChatSession(Slot(model), self.tok, self.tok.template())
        first = session.turn("ab", argmax, 2)
        self.assertEqual(first.text, "aa")
        cached = len(session.slot.tokens)
        self.assertEqual(cached, first.stats.num_prompt_tokens + 1)
        model.calls.clear()
        second = session.turn("ab", argmax, 2)
        self.assertEqual(model.calls[0][0], cached)
        # The second "a" of the reply never ran; then "d" + "abd" + "c".
        self.assertEqual(second.stats.num_prompt_tokens, 6)
        self.assertEqual([m["content"] for m in session.messages], ["ab", "aa", "ab", "aa"])

    def test_old_turns_are_dropped_when_the_context_fills(self):
        model = ScriptedModel([A], 40)
        session = ChatSession(Slot(model), self.tok, self.tok.template(), system_prompt="bb")
        dropped = 0
        for turn in range(8):
            model.calls.clear()
            # Consecutive questions differ, so a dropped exchange changes the prefix.
            session.turn("cd"[turn % 2] * 8, argmax, 4)
            self.assertTrue(all(pos + n <= 40 for pos, n in model.calls))
            if session.dropped_last_turn:
                dropped += 1
                self.assertLessEqual(model.calls[0][0], 5)
                self.assertEqual([m["role"] for m in session.messages[:2]], ["system", "user"])
        self.assertGreater(dropped, 0)

    def test_a_question_too_long_alone_changes_nothing(self):
        session = ChatSession(Slot(ScriptedModel([A], 16)), self.tok, self.tok.template())
        session.turn("ab", argmax, 2)
        with self.assertRaisesRegex(ContextOverflow, "context holds 16"):
            session.turn("a" * 40, argmax, 2)
        self.assertEqual(len(session.messages), 2)


if __name__ == "__main__":
    unittest.main()
