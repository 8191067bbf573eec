"""llama.cpp's own tools, built once into the user cache for this CPU, and run.

`llama-perplexity` is the anchor for `torchchat eval`: the same GGUF, text,
context and stride through llama.cpp's own tool. `llama-server` is the peer
of `torchchat server` in server/bench.py, and `llama-bench` the standalone
peer of runner/bench. All come from the llama-cpp-python sdist on PyPI
(pinned by sha256), which vendors all of llama.cpp; only the one target is
built, with the instruction sets this CPU has (cmake_flags(): AVX-512 only
where /proc/cpuinfo lists it, since a forced one dies with SIGILL on an
AVX2-only CPU; never AMX, whose path crashes on these VMs). The flags are
part of the cache key, so a build for one CPU kind is never reused on
another. About 5 minutes each on 2 cores.

    python3 peers/llama_cpp.py [llama-server]   # builds if needed; prints the binary's path

Stdlib only, so it runs before (or without) the Bazel environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script, not under Bazel: find peers/ beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peers.pinned import DataError, Wheel, cache_root, fetch_wheel, pip_command  # noqa: E402

SDIST = Wheel(
    "llama-cpp-python",
    "0.3.36",
    "llama_cpp_python-0.3.36.tar.gz",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
)
COMMON_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
]
# ggml's x86 switches, each on only when /proc/cpuinfo has every flag named.
_ISA_FLAGS = [
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
]


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags(flags: set | None = None) -> list[str]:
    """-DGGML_* for the instruction sets this CPU has (all off elsewhere)."""
    have = cpu_flags() if flags is None else flags
    return [
        f"-D{name}={'ON' if all(x in have for x in need) else 'OFF'}" for name, need in _ISA_FLAGS
    ]


def cmake_flags() -> list[str]:
    """The CMake flags for this CPU (also llama-cpp-python's CMAKE_ARGS)."""
    return COMMON_FLAGS + isa_flags()


# Each tool's flags beyond those. The server's web UI is left out: its
# assets are prebuilt on the Hugging Face hub (unreachable) or built with
# npm, and the benchmark needs only the API.
TOOLS = {
    "llama-perplexity": [],
    "llama-bench": [],
    "llama-server": [
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
    ],
}


def _flags(tool: str) -> list[str]:
    extra = TOOLS[tool]
    names = {f.split("=")[0] for f in extra}
    return [f for f in cmake_flags() if f.split("=")[0] not in names] + extra


def prefix(tool: str = "llama-perplexity") -> Path:
    key = hashlib.sha256((SDIST.sha256 + " ".join(_flags(tool))).encode()).hexdigest()[:12]
    return cache_root() / f"{tool}-{SDIST.version}-{key}"


def build(
    tool: str = "llama-perplexity",
    log=lambda m: print(f"llama_cpp: {m}", file=sys.stderr, flush=True),  # noqa: ANN001
) -> Path:
    """The tool's binary (a key of TOOLS), built on first use."""
    out = prefix(tool)
    binary = out / tool
    if binary.is_file():
        return binary
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{tool}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        sdist = fetch_wheel(SDIST, root / "eval-wheels", log)
        with tempfile.TemporaryDirectory(dir=root, prefix=".llama-build-") as tmp:
            log(f"unpacking {sdist.name}")
            with tarfile.open(sdist) as t:
                members = [m for m in t.getmembers() if "/vendor/llama.cpp/" in m.name]
                t.extractall(tmp, members=members, filter="data")
            src = next(Path(tmp).glob("*/vendor/llama.cpp"))
            b = Path(tmp) / "build"
            jobs = str(os.cpu_count() or 2)
            log("configuring (cmake)")
            subprocess.run(
                ["cmake", "-S", str(src), "-B", str(b), *_flags(tool)],
                check=True,
                capture_output=True,
            )
            log(f"building {tool} with {jobs} jobs (about 5 minutes on 2 cores)")
            subprocess.run(["cmake", "--build", str(b), "--target", tool, "-j", jobs], check=True)
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(next(b.glob(f"bin/{tool}")), out / f".{tool}.tmp")
            os.replace(out / f".{tool}.tmp", binary)
    return binary


def _log(m: str) -> None:
    print(f"llama_cpp: {m}", file=sys.stderr, flush=True)


def source_tree(log=_log) -> Path:  # noqa: ANN001
    """The sdist's vendored llama.cpp, unpacked once: its convert_hf_to_gguf.py
    (with the conversion/ package) and gguf-py."""
    root = cache_root()
    out = root / f"llama.cpp-src-{SDIST.version}-{SDIST.sha256[:12]}"
    done = out / ".unpacked"
    if done.is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".llama-src.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return out
        sdist = fetch_wheel(SDIST, root / "eval-wheels", log)
        shutil.rmtree(out, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".llama-src-") as tmp:
            log(f"unpacking {sdist.name}")
            with tarfile.open(sdist) as t:
                members = [m for m in t.getmembers() if "/vendor/llama.cpp/" in m.name]
                t.extractall(tmp, members=members, filter="data")
            os.replace(next(Path(tmp).glob("*/vendor/llama.cpp")), out)
        done.write_text("")
    return out


def python_package(log=_log) -> Path:  # noqa: ANN001
    """llama-cpp-python (the pinned sdist) built for this CPU and installed
    into the user cache: the directory to put on sys.path. pip's wheel cache
    keys wheels by version, not by CMAKE_ARGS, so it is bypassed
    (--no-cache-dir): a wheel built on another CPU kind is never reused."""
    flags = [f for f in cmake_flags() if f.startswith(("-DGGML_", "-DCMAKE_BUILD_TYPE"))]
    key = hashlib.sha256((SDIST.sha256 + " ".join(flags)).encode()).hexdigest()[:12]
    root = cache_root()
    out = root / f"llama-cpp-python-{SDIST.version}-{key}"
    if (out / "llama_cpp" / "__init__.py").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".llama-cpp-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "llama_cpp" / "__init__.py").is_file():
            return out
        sdist = fetch_wheel(SDIST, root / "eval-wheels", log)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".llama-cpp-python-"))
        try:
            log(f"building llama-cpp-python {SDIST.version} for this CPU (about 10 minutes)")
            env = dict(os.environ, CMAKE_ARGS=" ".join(flags), CMAKE_BUILD_PARALLEL_LEVEL="2")
            cmd = pip_command() + ["install", "--no-cache-dir", "--no-deps", "--quiet"]
            cmd += ["--target", str(tmp), str(sdist), "diskcache"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                why = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise DataError(f"cannot build llama-cpp-python: {why}")
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    perplexity: float | None
    hellaswag: float | None  # its acc_norm, a fraction
    tokens: int | None  # the text's, as llama.cpp tokenized it
    seconds: float  # the whole command, load included
    log: str


def run(binary: Path, gguf: Path, args: Sequence[str], threads: int = 2) -> Run:
    """llama-perplexity -m GGUF ARGS, with what it reports parsed."""
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise DataError(
            f"llama-perplexity failed ({r.returncode}): {log.strip().splitlines()[-1:]}"
        )
    ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    hs = re.findall(r"^(\d+)\t([0-9.]+)%\t", log, re.M)
    tokens = re.search(r"have (\d+) tokens|tokenizes to only (\d+)", log)
    n = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", log)
    del n
    return Run(
        float(ppl.group(1)) if ppl else None,
        float(hs[-1][1]) / 100 if hs else None,
        int(next(g for g in tokens.groups() if g)) if tokens else None,
        seconds,
        log,
    )


def hellaswag_file(docs: list[dict], path: Path) -> None:
    """Docs in llama.cpp's HellaSwag format: per task six lines (the
    context, the gold ending's index, four endings). It scores
    context + " " + ending, as lm-eval's target delimiter does."""
    with open(path, "w") as f:
        for d in docs:
            f.write(d["query"] + "\n" + str(d["label"]) + "\n")
            for c in d["choices"]:
                f.write(c + "\n")


if __name__ == "__main__":
    print(build(*sys.argv[1:2]))
