"""Slow: the READMEs' `torchchat generate` and `chat` examples answer.

Every line of a ```sh block in README.md and torchchat/README.md that starts
with `tools/bazel run //torchchat -- generate` or `... -- chat` is read from
the README itself and run through the //cli:torchchat binary (what `bazel
run` starts, without Bazel) on the built-in model. Each must exit 0 and
answer with at least MIN_WORDS words; a chat example is asked QUESTION.

What the test changes, and why:
- Skipped: lines that need a download (a `download` step, or a model alias
  that is not built in). The test prints each with its reason.
- `model.gguf`, the README's stand-in for the reader's own file, becomes the
  built-in model's GGUF.
- An artifact under `out/` is made first by the README's own export_llm
  line that writes it (through the //export:export_llm binary). A line that
  asks for exactly what //tests:builtin_pte was built with (the same output
  flag and BUILTIN_PTE_ARGS) takes that file instead of exporting it again.
- `--compile none` unless the line sets --compile: the compiled package
  gives the same ids and each set of flags would compile for about 2
  minutes (//cli:compile_test covers it); `--seed 0` unless the line sets a
  seed, so that a sampled answer is the same every run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest
from dataclasses import dataclass
from pathlib import Path

from cli import main as cli
from torchchat import registry

RUNFILES = Path(os.environ["TEST_SRCDIR"]) / "_main"
READMES = ("README.md", "torchchat/README.md")
TORCHCHAT = RUNFILES / "cli" / "torchchat"
EXPORT_LLM = RUNFILES / "export" / "export_llm"
PREFIX = "tools/bazel run //torchchat --"
EXPORT_PREFIX = "tools/bazel run //export:export_llm --"
COMMANDS = ("generate", "chat")
QUESTION = "Why is the sky blue?"
MIN_WORDS = 5
# The README's stand-in for a file the reader brings.
PLACEHOLDER_GGUF = "model.gguf"
OUTPUT_FLAGS = ("--output-pte-path", "--output-aoti-package-path")
# What //tests:builtin_pte ran export_llm with, besides its output path.
BUILTIN_PTE_ARGS = os.environ["BUILTIN_PTE_ARGS"].split()
BUILTIN_PTE_DIR = RUNFILES / "tests" / "builtin"


@dataclass
class Example:
    readme: str
    line: str
    argv: list[str]  # after `tools/bazel run //torchchat --`
    after: list[str]  # the torchchat commands before it on its line


def sh_lines(text: str) -> list[str]:
    """The lines of the ```sh blocks of a Markdown text."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside and line.strip() == "```sh"
            continue
        if inside:
            lines.append(line.strip())
    return lines


def commands(line: str) -> list[list[str]]:
    """A shell line's commands (split at && and |), comments dropped."""
    out: list[list[str]] = [[]]
    for word in shlex.split(line, comments=True):
        if word in ("&&", "|", ";"):
            out.append([])
        else:
            out[-1].append(word)
    return [c for c in out if c]


def examples(readme: str) -> list[Example]:
    """Each `torchchat generate|chat` command on the README's sh lines."""
    text = (RUNFILES / readme).read_text()
    prefix = PREFIX.split()
    found = []
    for line in sh_lines(text):
        if not line.startswith(PREFIX):
            continue
        before: list[str] = []
        for command in commands(line):
            if command[: len(prefix)] != prefix or len(command) == len(prefix):
                continue
            argv = command[len(prefix) :]
            if argv[0] in COMMANDS:
                found.append(Example(readme, line, argv, list(before)))
            before.append(argv[0])
    return found


def export_lines(readme: str) -> list[list[str]]:
    """export_llm's arguments on each of the README's export lines."""
    text = (RUNFILES / readme).read_text()
    return [
        commands(line)[0][len(EXPORT_PREFIX.split()) :]
        for line in sh_lines(text)
        if line.startswith(EXPORT_PREFIX)
    ]


def needs_download(example: Example) -> str | None:
    """Why an example cannot run offline, or None."""
    if "download" in example.after:
        return "a download comes first"
    # The CLI's own parser says which word is the model; an artifact's is
    # the word of the export line that writes it.
    models = [cli.build_parser().parse_args(example.argv).model]
    for a in example.argv:
        if a.startswith("out/"):
            models += [args[0] for args in export_lines(example.readme) if artifact_of(args, a)]
    for model in models:
        if model is None or model.startswith("-"):
            continue
        try:
            entry = registry.resolve(model)
        except registry.RegistryError:
            continue  # a path: it runs or fails like any other example
        if not entry.builtin:
            return f"{model} is not built in"
    return None


def artifact_of(args: list[str], artifact: str) -> bool:
    """Whether export_llm ARGS writes `artifact`."""
    return artifact in {args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_FLAGS}


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]{2,}", text)


class ReadmeExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.env = {k: v for k, v in os.environ.items() if k != "BUILD_WORKING_DIRECTORY"}
        cls.env["HF_HUB_OFFLINE"] = "1"
        cls.builtin_gguf = str(registry.checkpoint_path(registry.resolve(registry.DEFAULT_MODEL)))
        cls.exported: set[str] = set()

    def test_the_readmes_have_examples(self):
        # A parser that finds nothing would pass everything below.
        for readme in READMES:
            self.assertGreaterEqual(len(examples(readme)), 3, readme)

    def test_examples_answer(self):
        ran = 0
        for readme in READMES:
            for example in examples(readme):
                reason = needs_download(example)
                if reason:
                    print(f"skipped ({reason}): {example.line}", flush=True)
                    continue
                with self.subTest(readme=readme, line=example.line):
                    self.check(example)
                ran += 1
        self.assertGreaterEqual(ran, 6)

    def check(self, example: Example) -> None:
        argv = [self.builtin_gguf if a == PLACEHOLDER_GGUF else a for a in example.argv]
        for a in argv:
            if a.startswith("out/"):
                self.export(example.readme, a)
        if not any(a == "--compile" or a.startswith("--compile=") for a in argv):
            argv += ["--compile", "none"]
        if "--seed" not in argv:
            argv += ["--seed", "0"]
        chat = argv[0] == "chat"
        p = subprocess.run(
            [str(TORCHCHAT), *argv],
            input=QUESTION + "\n" if chat else "",
            capture_output=True,
            text=True,
            cwd=self.dir,
            env=self.env,
            timeout=600,
        )
        print(f"$ torchchat {shlex.join(argv)}\n{p.stdout}", flush=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("Traceback", p.stderr)
        answer = p.stdout
        if chat:
            answer = answer.split("Assistant:", 1)[-1]
        elif "--chat-template" not in argv:
            # generate echoes a raw prompt before its answer.
            prompt = argv[argv.index("--prompt") + 1] if "--prompt" in argv else ""
            self.assertTrue(answer.startswith(prompt), answer)
            answer = answer[len(prompt) :]
        self.assertGreaterEqual(
            len(words(answer)),
            MIN_WORDS,
            f"no answer from `{example.line}` ({example.readme}): {p.stdout!r}\n{p.stderr}",
        )

    def export(self, readme: str, artifact: str) -> None:
        """Runs the README's export line that writes `artifact`, once."""
        if artifact in self.exported:
            return
        for args in export_lines(readme):
            outputs = {args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_FLAGS}
            if artifact_of(args, artifact):
                for out in outputs:
                    (self.dir / out).parent.mkdir(parents=True, exist_ok=True)
                if args[:1] == ["--output-pte-path"] and args[2:] == BUILTIN_PTE_ARGS:
                    self.copy_builtin_pte(Path(args[1]))
                    self.exported |= outputs
                    return
                p = subprocess.run(
                    [str(EXPORT_LLM), *args, "--quiet"],
                    capture_output=True,
                    text=True,
                    cwd=self.dir,
                    env=self.env,
                    timeout=1200,
                )
                self.assertEqual(p.returncode, 0, p.stderr)
                self.exported |= outputs
                return
        self.fail(f"{readme} has no export line that writes {artifact}")

    def copy_builtin_pte(self, pte: Path) -> None:
        """The line's own output: //tests:builtin_pte ran the same command."""
        out = self.dir / pte
        print(f"{pte}: //tests:builtin_pte, made with the same arguments", flush=True)
        for f in BUILTIN_PTE_DIR.iterdir():
            shutil.copyfile(f, out.parent / (out.name if f.suffix == ".pte" else f.name))


if __name__ == "__main__":
    unittest.main()
