"""Parity with HF tokenizers for each tokenizer.json component we support.

Small BPE models are trained here with HF tokenizers on botchan.txt, given
the normalizers, pre-tokenizers, model options, added tokens and decoders
under test, saved as tokenizer.json and loaded by llm_tokenizers. Every
configuration must produce the same ids and the same decoded text on every
line.
"""

import json
import os
import tempfile
import unittest

import corpus

import llm_tokenizers as L
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

_SP = corpus.sentencepiece_sdist()
with open(os.path.join(_SP, "data", "botchan.txt"), encoding="utf-8") as f:
    BOTCHAN = f.read()
TRAIN = BOTCHAN.splitlines()[:2000]
TEXTS = (
    BOTCHAN.splitlines(keepends=True)[2000:3500]
    + corpus.EDGE_CASES
    + [
        "Hello, World! 2024-01-01 12:30 x1y22z333",
        "  leading and trailing  ",
        "a,b;c.d  e\tf\ng",
        "<tool> call <tool>hello helloworld hello, <s>x</s>",
        "\u00a0\u3000<tool>\u2003\u00e0<tool>\u0105 \u3000 <tool>\t\n",
        "▁already ▁metaspace",
    ]
)


def train(pre_tokenizer, model, normalizer=None, vocab_size=800, special=(), **trainer_args):
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special), show_progress=False, **trainer_args
    )
    tok.train_from_iterator(TRAIN, trainer)
    return tok


def with_json(tok, edit):
    j = json.loads(tok.to_str())
    edit(j)
    return Tokenizer.from_str(json.dumps(j))


def add_byte_tokens(j):
    vocab = j["model"]["vocab"]
    n = max(vocab.values()) + 1
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", n + b)


class HfComponents(unittest.TestCase):
    def check(self, name, ref, texts=TEXTS):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "tokenizer.json")
            ref.save(path)
            ours = L.load(path)
        self.assertEqual(ours.type, "hf")
        bad, first = 0, None
        for t in texts:
            want = ref.encode(t, add_special_tokens=False).ids
            got = ours.encode(t)
            dec_ok = ours.decode(want) == ref.decode(want, skip_special_tokens=False)
            stream = ours.stream_decoder()
            streamed = "".join(stream.push(i) for i in want) + stream.flush()
            if got != want or not dec_ok or streamed != ours.decode(want):
                bad += 1
                if first is None:
                    first = (
                        t[:80],
                        got[:20],
                        want[:20],
                        ours.decode(want)[:80],
                        ref.decode(want, skip_special_tokens=False)[:80],
                        streamed[:80],
                    )
        self.assertEqual(bad, 0, f"{name}: {bad}/{len(texts)} lines differ; first: {first}")

    def test_llama2_style_byte_fallback(self):
        tok = train(
            None,
            models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
            normalizer=normalizers.Sequence(
                [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
            ),
            special=["<unk>", "<s>", "</s>"],
            limit_alphabet=60,
        )
        tok = with_json(tok, add_byte_tokens)
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        self.check("llama2-style", tok)
        # Without byte tokens, unknown characters fuse into one <unk>.
        tok2 = train(
            None,
            models.BPE(unk_token="<unk>", fuse_unk=True),
            normalizer=normalizers.Replace(" ", "▁"),
            special=["<unk>"],
            limit_alphabet=40,
        )
        self.check("unk-fused", tok2)

    def test_gemma_style_byte_fallback(self):
        # Gemma 2/3's tokenizer.json: spaces become ▁ with no prefix space,
        # no pre-tokenizer, byte fallback, and turn markers as added tokens
        # (Phi-3's is the llama2-style one above).
        tok = train(
            None,
            models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
            normalizer=normalizers.Replace(" ", "▁"),
            special=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
            limit_alphabet=60,
        )
        tok = with_json(tok, add_byte_tokens)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        turns = [
            f"<start_of_turn>user\n{t}<end_of_turn>\n<start_of_turn>model\n" for t in TEXTS[:50]
        ]
        self.check("gemma-style", tok, TEXTS + turns)

    def test_subword_prefix_and_suffix(self):
        tok = train(
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Whitespace(),
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.Punctuation(),
                ]
            ),
            models.BPE(
                unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"
            ),
            normalizer=normalizers.Sequence([normalizers.Strip(), normalizers.Replace("``", '"')]),
            special=["[UNK]"],
            continuing_subword_prefix="##",
            end_of_word_suffix="</w>",
        )
        self.check("prefix+suffix, no decoder", tok)

    def test_split_behaviors(self):
        base = train(pre_tokenizers.ByteLevel(add_prefix_space=False), models.BPE())
        base.decoder = decoders.ByteLevel()
        for behavior in (
            "removed",
            "isolated",
            "merged_with_previous",
            "merged_with_next",
            "contiguous",
        ):
            for invert in (False, True):
                for pattern in (Regex(r"\s+|[,.;!?]"), " "):
                    base.pre_tokenizer = pre_tokenizers.Sequence(
                        [
                            pre_tokenizers.Split(pattern, behavior, invert=invert),
                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                        ]
                    )
                    self.check(
                        f"Split {behavior} invert={invert} {pattern!r}",
                        base,
                        TEXTS[:400] + corpus.EDGE_CASES,
                    )
        for pre in (
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Punctuation("contiguous"),
        ):
            base.pre_tokenizer = pre_tokenizers.Sequence(
                [pre, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
            self.check(f"{pre}", base, TEXTS[:400] + corpus.EDGE_CASES)

    def test_byte_level_prefix_space_and_ignore_merges(self):
        tok = train(pre_tokenizers.ByteLevel(add_prefix_space=True), models.BPE())
        tok.decoder = decoders.ByteLevel()
        self.check("ByteLevel prefix", tok)

        def ignore(j):
            j["model"]["ignore_merges"] = True

        self.check("ignore_merges", with_json(tok, ignore))

    def test_metaspace(self):
        for scheme in ("always", "first", "never"):
            for split in (True, False):
                tok = train(
                    pre_tokenizers.Metaspace(prepend_scheme=scheme, split=split),
                    models.BPE(unk_token="<unk>"),
                    special=["<unk>", "<s>"],
                )
                tok.decoder = decoders.Metaspace(prepend_scheme=scheme, split=split)
                tok.add_special_tokens(["<s>"])
                self.check(f"Metaspace {scheme} split={split}", tok)

    def test_added_tokens(self):
        tok = train(pre_tokenizers.ByteLevel(add_prefix_space=False), models.BPE())
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [AddedToken("<s>", normalized=False), AddedToken("</s>", normalized=False)]
        )
        tok.add_tokens(
            [
                AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False),
                AddedToken("hello", single_word=True, normalized=False),
            ]
        )
        self.check("added tokens", tok)

    def test_normalizers(self):
        tok = train(
            pre_tokenizers.ByteLevel(add_prefix_space=False),
            models.BPE(),
            normalizer=normalizers.Sequence(
                [
                    normalizers.Strip(left=True, right=False),
                    normalizers.Replace("e", "E"),
                    normalizers.Prepend("@"),
                ]
            ),
        )
        tok.decoder = decoders.ByteLevel()
        self.check("normalizers", tok)

    def test_unicode_normalizers_and_lowercase(self):
        # Byte-level BPE is lossless, so decode(encode(x)) is the normalized
        # text. Our tables come from Python's unicodedata (Unicode 14); HF's
        # are older, and differ on ~70 compatibility mappings added since.
        # So: every assigned character must match Python's normalize(), and
        # every character Unicode 3.2 already had must match HF.
        import unicodedata

        assigned = [
            chr(c)
            for c in range(0x20, 0x30000)
            if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"
        ]
        old = [c for c in assigned if unicodedata.ucd_3_2_0.category(c) != "Cn"]

        def chunk(cs):
            return ["".join(cs[i : i + 64]) for i in range(0, len(cs), 64)]

        extra = corpus.EDGE_CASES + [
            "e\u0301\u0323 \u1e0b\u0323 \u0071\u0307\u0323 \uac00\u11a8 \u1100\u1161\u11a8",
            "\ufb01 \u00bd \u210c \u2460 \uff76 \uff9e \u212b \u2126 \u01c5 \u0130 \u03a3\u0391\u03a3 \u1e9e",
        ]
        for name, norm in [
            ("NFC", normalizers.NFC()),
            ("NFD", normalizers.NFD()),
            ("NFKC", normalizers.NFKC()),
            ("NFKD", normalizers.NFKD()),
            ("Lowercase", normalizers.Lowercase()),
        ]:
            tok = Tokenizer(models.BPE())
            tok.normalizer = norm
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            tok.train_from_iterator(
                TRAIN[:200],
                trainers.BpeTrainer(
                    vocab_size=300,
                    show_progress=False,
                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                ),
            )
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "tokenizer.json")
                tok.save(path)
                ours = L.load(path)

            def roundtrip(t):
                return ours.decode(ours.encode(t))

            bad_hf = [t for t in chunk(old) + extra if roundtrip(t) != norm.normalize_str(t)]
            self.assertEqual(len(bad_hf), 0, f"{name} vs HF: {bad_hf[:1]}")
            if name == "Lowercase":

                def python(t):
                    return "".join(c.lower() for c in t)
            else:

                def python(t, f=name):
                    return unicodedata.normalize(f, t)

            bad_py = [t for t in chunk(assigned) + extra if roundtrip(t) != python(t)]
            self.assertEqual(len(bad_py), 0, f"{name} vs unicodedata: {bad_py[:1]}")
            self.check(name, tok, TEXTS[:300])


if __name__ == "__main__":
    unittest.main()
