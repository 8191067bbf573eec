"""A Gemma 3 checkpoint with a vision tower exports to a .pte with
ExecuTorch's multimodal methods, and et_run --image gives eager's greedy
ids: a tiny random Gemma3ForConditionalGeneration (testing.tiny_vision), a
real photo at the tower's size as a PPM, two images in the prompt; in chat
(et_run -m chat --image, /image, and the C API's
torchchat_chat_turn_with_images), eager chat's ids turn by turn. The cases
are export.vision_cases's, which //export:vision_pt2_test shares.
"""

import json
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

from PIL import Image

from export import vision_cases as vc
from testing import cli_harness
from testing.tiny_vision import IMAGE_SIZE

PROMPT, CHAT = vc.PROMPT, vc.CHAT
LIB = "runner/c_api/libtorchchat_et.so.1"
_runfile, _run = vc.runfile, vc.run


class VisionPte(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.ckpt, cls.images, cls.pte = vc.export_case(cls.tmp, "--output-pte-path", "model.pte")
        cls.out = cls.pte.parent

    def eager_ids(self) -> list[int]:
        return vc.eager_ids(self.ckpt, self.images)

    def eager_chat(self) -> tuple[list[list[int]], list[int], list[int], int]:
        return vc.eager_chat(self.ckpt, self.images)

    def et_run_chat(self, *extra: str) -> subprocess.CompletedProcess:
        return vc.runner_chat("runner/et/et_run", self.pte, self.images, *extra)

    def et_run(self, *extra: str) -> subprocess.CompletedProcess:
        return vc.runner_generate("runner/et/et_run", self.pte, self.images, *extra)

    def test_methods(self):
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(self.pte))
        names = set(program.method_names)
        for m in ("vision_encoder", "token_embedding", "text_decoder", "image_decoder"):
            self.assertIn(m, names)
        self.assertNotIn("forward", names)
        got = {m: program.load_method(m).execute([])[0] for m in ("get_image_size",)}
        self.assertEqual(got["get_image_size"], IMAGE_SIZE)

    def test_et_run_matches_eager(self):
        ids = self.out / "ids.json"
        r = self.et_run("--ids-json", str(ids))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        got = json.loads(ids.read_text())["generated"]
        want = self.eager_ids()
        self.assertEqual(got, want[: len(got)])
        self.assertGreater(len(got), 8)
        # The CLI's generate --image prints the same text after the prompt.
        argv = ["generate", "--checkpoint-path", str(self.ckpt), "--compile", "none"]
        argv += ["--prompt", PROMPT, "--max-new-tokens", str(vc.STEPS), "--temperature", "0"]
        argv += ["--max-seq-length", str(vc.MAX_SEQ), "--quiet"]
        for p in self.images:
            argv += ["--image", str(p)]
        rc, out, err = cli_harness.run(argv)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, PROMPT + r.stdout)

    def test_et_run_chat_matches_eager(self):
        ids = self.out / "chat_ids.json"
        r = self.et_run_chat("--ids-json", str(ids))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertNotIn("error:", r.stderr)
        self.assertIn("(image attached to the next turn: 1)", r.stderr)
        got = json.loads(ids.read_text())["turns"]
        want, _, dropped, _ = self.eager_chat()
        self.assertEqual(dropped, [0, 0, 1])
        self.assertEqual(r.stderr.count("(forgot the oldest turn to fit the context)"), 1)
        self.assertEqual(len(got), len(CHAT))
        for turn, (g, w) in enumerate(zip(got, want)):
            with self.subTest(turn=turn):
                # et_run's ids end with the stop id, eager's do not.
                self.assertEqual(g[: len(w)], w)
                self.assertLessEqual(len(g) - len(w), 1)
        self.assertGreater(sum(len(w) for w in want), 8)

    def test_c_api_chat_equals_et_run(self):
        got = vc.c_api("--c-api-chat", LIB, self.pte, self.images)
        self.assertEqual(got["statuses"], [0] * len(CHAT), got["errors"])
        want = self.et_run_chat()
        self.assertEqual(want.returncode, 0, want.stderr[-2000:])
        self.assertEqual("".join(t + "\n" for t in got["texts"]), want.stdout)
        # Each turn prefills what eager's does (the same cache policy, and the
        # same exchange forgotten), and the second keeps the first image in
        # the cache: the same pixels at the same place.
        _, prefilled, dropped, after_first_image = self.eager_chat()
        self.assertEqual(got["prompt_tokens"][: len(CHAT)], prefilled)
        self.assertEqual(got["dropped"], dropped)
        self.assertLessEqual(got["prompt_tokens"][1], after_first_image)
        # A wrong size, and a message whose own marker leaves one place
        # more than images: INVALID_ARGUMENT, one line, and the chat goes on.
        self.assertEqual(got["small_status"], 1)
        self.assertIn("8x8; this model takes 32x32", got["small_error"])
        self.assertEqual(got["places_status"], 1)
        # (the conversation keeps the second turn's image: 3 places for 2)
        self.assertIn("places for 3 images, given 2", got["places_error"])
        self.assertEqual(got["after_status"], 0)

    def test_c_api_equals_et_run(self):
        got = vc.c_api("--c-api", LIB, self.pte, self.images)
        self.assertEqual(got["api_version"], 1003)
        self.assertEqual(got["image_size"], IMAGE_SIZE)
        self.assertEqual(got["status"], 0, got["error"])
        want = self.et_run()
        self.assertEqual(want.returncode, 0, want.stderr[-2000:])
        self.assertEqual(got["text"] + "\n", want.stdout)
        # One image for a prompt with places for two: INVALID_ARGUMENT.
        self.assertEqual(got["mismatch_status"], 1)
        self.assertIn("2 image markers", got["mismatch_error"])

    def test_bad_input_is_one_line(self):
        bad = self.tmp / "bad.ppm"
        bad.write_text("hello")
        small = self.tmp / "small.ppm"
        Image.new("RGB", (8, 8)).save(small)
        text_pte = _runfile("testing/tiny/model.pte")
        text_pt2 = _runfile("testing/tiny/model.pt2")
        cases = [
            (["runner/et/et_run", str(self.pte)], "nope.ppm", "nope.ppm: cannot open it"),
            (["runner/et/et_run", str(self.pte)], str(bad), "not a binary PPM"),
            (["runner/et/et_run", str(self.pte)], str(small), "8x8; this model takes 32x32"),
            (["runner/et/et_run", str(text_pte)], str(small), "has no vision encoder"),
            (["runner/aoti/aoti_run", str(text_pt2)], str(small), "has no vision encoder"),
        ]
        a, b = map(str, self.images)
        for mode in ("generate", "chat"):
            for runner, image, pattern in cases:
                with self.subTest(runner=runner[0], image=image, mode=mode):
                    r = _run([*runner, "-m", mode, "-i", PROMPT, "--image", image])
                    self.assertEqual(r.returncode, 1, r.stderr)
                    lines = [ln for ln in r.stderr.strip().splitlines() if "error:" in ln]
                    self.assertEqual(len(lines), 1, r.stderr)
                    self.assertIn(pattern, lines[0])
        # More images than the prompt's markers.
        r = _run(
            ["runner/et/et_run", str(self.pte), "-i", f"<start_of_image> {PROMPT}"]
            + ["--image", a, "--image", b]
        )
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr.count("error:"), 1, r.stderr)
        self.assertIn("1 image markers (<start_of_image>) for 2 images", r.stderr)
        # In chat a bad turn or /image is one line, and the chat goes on.
        chat = ["runner/et/et_run", str(self.pte), "-m", "chat", "-n", "2"]
        r = subprocess.run(
            [str(_runfile(chat[0])), *chat[1:], "--image", a],
            input=f"<start_of_image> {PROMPT}\n/image {bad}\n/image\n{PROMPT}\n/exit\n",
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [ln for ln in r.stderr.strip().splitlines() if "error:" in ln]
        self.assertEqual(len(lines), 3, r.stderr)
        self.assertIn("places for 2 images, given 1", lines[0])
        self.assertIn("not a binary PPM", lines[1])
        self.assertIn("/image needs a PATH", lines[2])
        self.assertEqual(r.stderr.count("peak rss"), 1, r.stderr)  # one turn ran
        # torchchat's Python runs text-only programs; it says so.
        rc, _, err = cli_harness.run(["generate", "--pte-path", str(self.pte), "--prompt", "Hi"])
        self.assertEqual(rc, 1, err)
        self.assertIn("vision encoder", err.strip().splitlines()[-1])


if __name__ == "__main__":
    unittest.main()
