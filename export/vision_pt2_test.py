"""A Gemma 3 checkpoint with a vision tower exports to a .pt2 whose decoder
takes image embeddings and whose vision_encoder is a second model in the
package (export/vision_pt2.py); aoti_run --image, -m chat with /image, the
C API of libtorchchat_aoti.so and torchchat generate|chat --image on the
package give eager's greedy ids. export.vision_cases's cases, as
//export:vision_pte_test runs them on the .pte; one export for all.
"""

import json
import os
import tempfile
import unittest
import zipfile
from pathlib import Path

from PIL import Image

from export import vision_cases as vc
from testing import cli_harness
from testing.tiny_vision import IMAGE_SIZE
from torchchat import artifacts

AOTI_RUN = "runner/aoti/aoti_run"
LIB = "runner/c_api/libtorchchat_aoti.so.1"


class VisionPt2(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.ckpt, cls.images, cls.pt2 = vc.export_case(
            cls.tmp, "--output-aoti-package-path", "model.pt2"
        )
        cls.out = cls.pt2.parent
        cls.want_chat = vc.eager_chat(cls.ckpt, cls.images)

    def cli(self, mode: str, *extra: str, stdin: str = "") -> tuple[int, str, str]:
        argv = [mode, "--aoti-package-path", str(self.pt2), "--temperature", "0", "--quiet"]
        return cli_harness.run(argv + list(extra), stdin)

    def test_package(self):
        with zipfile.ZipFile(self.pt2) as z:
            names = [n.split("/aotinductor/", 1)[1] for n in z.namelist() if "/aotinductor/" in n]
        models = {n.split("/")[0] for n in names}
        self.assertEqual(models, {"model", "vision_encoder"})
        meta = artifacts.parse_pt2_metadata(artifacts.read_pt2_metadata(self.pt2), self.pt2)
        self.assertEqual(meta["inputs"], artifacts.PT2_VISION_INPUTS)
        self.assertEqual(meta["image_size"], IMAGE_SIZE)

    def test_aoti_run_matches_eager(self):
        ids = self.out / "ids.json"
        r = vc.runner_generate(AOTI_RUN, self.pt2, self.images, "--ids-json", str(ids))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        got = json.loads(ids.read_text())["generated"]
        want = vc.eager_ids(self.ckpt, self.images)
        self.assertEqual(got, want[: len(got)])
        self.assertGreater(len(got), 8)
        # torchchat generate --image on the package prints the same text.
        argv = ["--prompt", vc.PROMPT, "--max-new-tokens", str(vc.STEPS)]
        for p in self.images:
            argv += ["--image", str(p)]
        rc, out, err = self.cli("generate", *argv)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, vc.PROMPT + r.stdout)

    def test_chat_matches_eager(self):
        ids = self.out / "chat_ids.json"
        r = vc.runner_chat(AOTI_RUN, self.pt2, self.images, "--ids-json", str(ids))
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertNotIn("error:", r.stderr)
        self.assertIn("(image attached to the next turn: 1)", r.stderr)
        got = json.loads(ids.read_text())["turns"]
        want, _, dropped, _ = self.want_chat
        self.assertEqual(dropped, [0, 0, 1])
        self.assertEqual(r.stderr.count("(forgot the oldest turn to fit the context)"), 1)
        self.assertEqual(len(got), len(vc.CHAT))
        for turn, (g, w) in enumerate(zip(got, want)):
            with self.subTest(turn=turn):
                # aoti_run's ids end with the stop id, eager's do not.
                self.assertEqual(g[: len(w)], w)
                self.assertLessEqual(len(g) - len(w), 1)
        self.assertGreater(sum(len(w) for w in want), 8)
        # torchchat chat --image on the package: the same replies.
        stdin = "".join(
            (f"/image {self.images[image]}\n" if image is not None else "") + text + "\n"
            for text, image in vc.CHAT
        )
        rc, out, err = self.cli("chat", "--max-new-tokens", str(vc.CHAT_STEPS), stdin=stdin)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.replace("Assistant: ", ""), r.stdout)

    def test_c_api_equals_aoti_run(self):
        got = vc.c_api("--c-api", LIB, self.pt2, self.images)
        self.assertEqual(got["image_size"], IMAGE_SIZE)
        self.assertEqual(got["status"], 0, got["error"])
        want = vc.runner_generate(AOTI_RUN, self.pt2, self.images)
        self.assertEqual(want.returncode, 0, want.stderr[-2000:])
        self.assertEqual(got["text"] + "\n", want.stdout)
        self.assertEqual(got["mismatch_status"], 1)
        self.assertIn("2 image markers", got["mismatch_error"])
        chat = vc.c_api("--c-api-chat", LIB, self.pt2, self.images)
        self.assertEqual(chat["statuses"], [0] * len(vc.CHAT), chat["errors"])
        want = vc.runner_chat(AOTI_RUN, self.pt2, self.images)
        self.assertEqual("".join(t + "\n" for t in chat["texts"]), want.stdout)
        _, prefilled, dropped, after_first_image = self.want_chat
        self.assertEqual(chat["prompt_tokens"][: len(vc.CHAT)], prefilled)
        self.assertEqual(chat["dropped"], dropped)
        self.assertLessEqual(chat["prompt_tokens"][1], after_first_image)
        self.assertEqual(chat["small_status"], 1)
        self.assertIn("8x8; this model takes 32x32", chat["small_error"])
        self.assertEqual(chat["places_status"], 1)
        self.assertEqual(chat["after_status"], 0)

    def test_bad_input_is_one_line(self):
        bad = self.tmp / "bad.ppm"
        bad.write_text("hello")
        small = self.tmp / "small.ppm"
        Image.new("RGB", (8, 8)).save(small)
        for mode in ("generate", "chat"):
            for image, pattern in [
                ("nope.ppm", "nope.ppm: cannot open it"),
                (str(bad), "not a binary PPM"),
                (str(small), "8x8; this model takes 32x32"),
            ]:
                with self.subTest(image=image, mode=mode):
                    r = vc.run([AOTI_RUN, str(self.pt2), "-m", mode, "-i", "Hi", "--image", image])
                    self.assertEqual(r.returncode, 1, r.stderr)
                    lines = [ln for ln in r.stderr.strip().splitlines() if "error:" in ln]
                    self.assertEqual(len(lines), 1, r.stderr)
                    self.assertIn(pattern, lines[0])
        # torchchat's Python resizes any image; a file that is none is one line.
        rc, _, err = self.cli("generate", "--prompt", "Hi", "--image", str(bad))
        self.assertEqual(rc, 1, err)
        self.assertEqual(err.count("error:"), 1, err)
        self.assertIn("bad.ppm", err.strip().splitlines()[-1])


if __name__ == "__main__":
    unittest.main()
