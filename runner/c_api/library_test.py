"""libtorchchat_et.so / libtorchchat_aoti.so from Python through ctypes alone.

Run once per library (args: LIB ARTIFACT RUNNER): the library exports
torchchat.h's functions and nothing else, and on the tiny model it produces
the same text as the runner binary, in generate and in chat mode, with the
errors the header promises.
"""

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from testing.c_api import (
    CALLBACK,
    CONTEXT,
    INVALID,
    LOAD,
    LOG_CALLBACK,
    LOG_INFO,
    NO_CALLBACK,
    OK,
    STOP_MAX,
    STOP_STOPPED,
    TOO_SMALL,
    Image,
    Stats,
    load,
)

# Bazel runs tests in the runfiles tree; the arguments are rootpaths in it.
LIB, ARTIFACT, RUNNER = (os.path.abspath(a) for a in sys.argv[1:4])
HEADER = os.path.abspath("runner/c_api/torchchat.h")
# The C shim entry points that 4-bit .pt2 packages call by name.
AOTI_SHIM = {
    "aoti_torch_cpu_q4_linear",
    "aoti_torch_cpu_q8_linear",
    "aoti_torch_cpu_ggml_linear",
    "aoti_torch_cpu_ggml_embedding",
}


def header_functions():
    with open(HEADER) as f:
        return set(re.findall(r"TORCHCHAT_EXPORT [^;(]*?\b(torchchat_\w+)\(", f.read()))


def exported(path):
    out = subprocess.run(
        ["nm", "-D", "--defined-only", path], check=True, capture_output=True, text=True
    ).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        # Upper-case types are global; "A" is the version node itself.
        if len(fields) == 3 and fields[1].isupper() and fields[1] != "A":
            names.add(fields[2].split("@")[0])
    return names


def run_cli(*args, stdin=None):
    r = subprocess.run(
        [RUNNER, ARTIFACT, *args], input=stdin, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


class LibraryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lib = load(LIB)
        cls.aoti = cls.lib.torchchat_backend() == b"aoti"

    def create(self, path=ARTIFACT, options=None):
        h = ctypes.c_void_p()
        status = self.lib.torchchat_runner_create(path.encode(), options, ctypes.byref(h))
        return status, h

    def runner(self):
        status, h = self.create()
        self.assertEqual(status, OK, self.lib.torchchat_last_error())
        self.addCleanup(self.lib.torchchat_runner_free, h)
        return h

    def config(self, n):
        c = self.lib.torchchat_default_generation_config()
        c.max_new_tokens = n
        return c

    def test_exports_only_the_header(self):
        want = header_functions()
        self.assertGreater(len(want), 25)
        if self.aoti:
            want |= AOTI_SHIM
        self.assertEqual(exported(LIB), want)
        self.assertEqual(self.lib.torchchat_api_version(), 1003)

    def test_generate_equals_the_runner(self):
        h = self.runner()
        pieces = []
        cb = CALLBACK(lambda text, n, _: pieces.append(ctypes.string_at(text, n)) or 0)
        stats = Stats()
        status = self.lib.torchchat_generate(
            h, b"Hello world", ctypes.byref(self.config(12)), cb, None, ctypes.byref(stats)
        )
        self.assertEqual(status, OK, self.lib.torchchat_last_error())
        text = b"".join(pieces).decode()
        self.assertEqual(text + "\n", run_cli("-i", "Hello world", "-n", "12"))
        self.assertEqual(stats.num_generated_tokens, 12)
        self.assertEqual(stats.stop_reason, STOP_MAX)
        self.assertGreater(stats.num_prompt_tokens, 1)

        # A callback that stops at once: one piece, stop reason "stopped".
        calls = []
        stop = CALLBACK(lambda text, n, _: calls.append(n) or 1)
        self.assertEqual(
            self.lib.torchchat_generate(h, b"Hello world", None, stop, None, ctypes.byref(stats)),
            OK,
        )
        self.assertEqual(len(calls), 1)
        self.assertEqual(stats.stop_reason, STOP_STOPPED)

        # A text-only program takes no images (export/vision_pte_test runs one that does).
        self.assertEqual(self.lib.torchchat_runner_image_size(h), 0)
        status = self.lib.torchchat_generate_with_images(
            h, b"Hello", None, 0, None, NO_CALLBACK, None, None
        )
        self.assertEqual(status, INVALID)
        self.assertIn(b"has no vision encoder", self.lib.torchchat_last_error())

    def test_chat_keeps_the_cache_and_equals_the_runner(self):
        h = self.runner()
        chat = ctypes.c_void_p()
        self.assertEqual(
            self.lib.torchchat_chat_create(h, None, ctypes.byref(chat)),
            OK,
            self.lib.torchchat_last_error(),
        )
        self.addCleanup(self.lib.torchchat_chat_free, chat)
        replies, prompt_tokens = [], []
        for question in (b"hi", b"and then?"):
            pieces = []
            cb = CALLBACK(lambda text, n, _: pieces.append(ctypes.string_at(text, n)) or 0)
            stats = Stats()
            status = self.lib.torchchat_chat_turn(
                chat, question, ctypes.byref(self.config(6)), cb, None, ctypes.byref(stats)
            )
            self.assertEqual(status, OK, self.lib.torchchat_last_error())
            replies.append(b"".join(pieces).decode())
            prompt_tokens.append(stats.num_prompt_tokens)
        self.assertEqual(
            "".join(r + "\n" for r in replies),
            run_cli("-m", "chat", "-n", "6", stdin="hi\nand then?\n/exit\n"),
        )
        # The second turn prefills only itself, not the first exchange again.
        tok = ctypes.c_void_p()
        self.assertEqual(self.lib.torchchat_runner_tokenizer(h, ctypes.byref(tok)), OK)
        self.addCleanup(self.lib.torchchat_tokenizer_free, tok)
        n = ctypes.c_size_t()
        first = f"user: hi\nassistant: {replies[0]}\n".encode()
        self.lib.torchchat_tokenizer_encode(tok, first, len(first), 0, None, 0, ctypes.byref(n))
        self.assertLess(prompt_tokens[1], prompt_tokens[0] + n.value)
        # An image for a text-only program: one line, and the chat goes on.
        img = Image(bytes(3), 1, 1)
        status = self.lib.torchchat_chat_turn_with_images(
            chat, b"look", ctypes.byref(img), 1, None, NO_CALLBACK, None, None
        )
        self.assertEqual(status, INVALID)
        self.assertIn(b"has no vision encoder", self.lib.torchchat_last_error())
        status = self.lib.torchchat_chat_turn_with_images(
            chat, b"and then?", None, 0, ctypes.byref(self.config(6)), NO_CALLBACK, None, None
        )
        self.assertEqual(status, OK, self.lib.torchchat_last_error())

    def test_tokenizer_round_trip(self):
        h = self.runner()
        tok = ctypes.c_void_p()
        self.assertEqual(self.lib.torchchat_runner_tokenizer(h, ctypes.byref(tok)), OK)
        self.addCleanup(self.lib.torchchat_tokenizer_free, tok)
        text = b"Hello world, hello again!"
        n = ctypes.c_size_t()
        self.assertEqual(
            self.lib.torchchat_tokenizer_encode(tok, text, len(text), 0, None, 0, ctypes.byref(n)),
            TOO_SMALL,
        )
        ids = (ctypes.c_int32 * n.value)()
        self.assertEqual(
            self.lib.torchchat_tokenizer_encode(
                tok, text, len(text), 0, ids, n.value, ctypes.byref(n)
            ),
            OK,
        )
        buf = ctypes.create_string_buffer(64)
        length = ctypes.c_size_t()
        self.assertEqual(
            self.lib.torchchat_tokenizer_decode(tok, ids, n.value, buf, 64, ctypes.byref(length)),
            OK,
        )
        self.assertEqual(buf.value, text)

    def test_bad_input(self):
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        ext = os.path.splitext(ARTIFACT)[1]
        corrupt = os.path.join(tmp, "model" + ext)
        with open(ARTIFACT, "rb") as f:
            data = f.read()
        with open(corrupt, "wb") as f:
            f.write(data[: len(data) // 3])
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(os.path.dirname(ARTIFACT), name), tmp)
        for path in (corrupt, os.path.join(tmp, "missing" + ext)):
            status, h = self.create(path)
            self.assertEqual(status, LOAD)
            self.assertIsNone(h.value)
            msg = self.lib.torchchat_last_error().decode()
            self.assertTrue(msg and "\n" not in msg, msg)

        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            f.write('{"model": {"type": "BPE", "vocab": [')
        shutil.copy(ARTIFACT, tmp)
        status, _ = self.create(os.path.join(tmp, os.path.basename(ARTIFACT)))
        self.assertEqual(status, LOAD)
        self.assertIn("tokenizer.json", self.lib.torchchat_last_error().decode())

        h = self.runner()
        ctx = self.lib.torchchat_runner_max_context(h)
        status = self.lib.torchchat_generate(h, b"hello " * ctx, None, NO_CALLBACK, None, None)
        self.assertEqual(status, CONTEXT)
        self.assertIn(f"context holds {ctx}", self.lib.torchchat_last_error().decode())
        status = self.lib.torchchat_generate(h, b"\xff", None, NO_CALLBACK, None, None)
        self.assertEqual(status, INVALID)
        self.assertEqual(
            self.lib.torchchat_generate(None, b"hi", None, NO_CALLBACK, None, None), INVALID
        )
        self.assertIn("runner is NULL", self.lib.torchchat_last_error().decode())
        # Still serving.
        self.assertEqual(
            self.lib.torchchat_generate(
                h, b"hi", ctypes.byref(self.config(2)), NO_CALLBACK, None, None
            ),
            OK,
        )

    def test_quiet_unless_asked_to_log(self):
        def child(mode):
            r = subprocess.run(
                [sys.executable, __file__, LIB, ARTIFACT, RUNNER, "--log-child", mode],
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout, r.stderr

        out, err = child("default")
        self.assertEqual((out, err), ("0 lines\n", ""))
        out, err = child("callback")
        self.assertEqual(err, "")
        if not self.aoti:
            # ExecuTorch logs as it loads a program (mmap_data_loader.cpp ...).
            self.assertNotEqual(out, "0 lines\n")
            out, err = child("stderr")
            self.assertIn(".cpp:", err)


def log_child(mode: str) -> None:
    """Loads the library in a fresh process and runs a little, logging as `mode` says."""
    lib = load(LIB)
    lines = []
    keep = LOG_CALLBACK(lambda level, line, _: lines.append(line))
    if mode == "stderr":
        assert lib.torchchat_set_log(LOG_INFO, LOG_CALLBACK(), None) == OK
    elif mode == "callback":
        assert lib.torchchat_set_log(LOG_INFO, keep, None) == OK
    h = ctypes.c_void_p()
    assert lib.torchchat_runner_create(ARTIFACT.encode(), None, ctypes.byref(h)) == OK
    config = lib.torchchat_default_generation_config()
    config.max_new_tokens = 2
    assert lib.torchchat_generate(h, b"hi", ctypes.byref(config), NO_CALLBACK, None, None) == OK
    lib.torchchat_runner_free(h)
    print(f"{len(lines)} lines")


if __name__ == "__main__":
    if "--log-child" in sys.argv:
        log_child(sys.argv[sys.argv.index("--log-child") + 1])
    else:
        unittest.main(argv=sys.argv[:1])
