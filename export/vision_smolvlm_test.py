"""SmolVLM, the second vision family, exports as Gemma 3 does: a .pte with
ExecuTorch's multimodal methods and a .pt2 with a vision_encoder beside an
image-aware decoder (export/vision_pte.py, export/vision_pt2.py), from a
tiny random SmolVLMForConditionalGeneration (testing.tiny_smolvlm). The
runners cut any image into tiles as its processor does, Pillow's resizes
replayed to the byte (runner/common/resample.h, held to Pillow here through
//runner/common:tile_ppm), write the tiles' markers as transformers does,
and give eager's greedy ids through the KV cache: et_run, aoti_run, both C
API libraries, chat with /image, and torchchat generate on the package.
One export of each (~2 min on 2 cores), shared by every test.
"""

import dataclasses
import json
import os
import subprocess
import tempfile
import unittest
import zipfile
from pathlib import Path

from PIL import Image

from export import export_llm
from export import vision_cases as vc
from testing import cli_harness
from testing.tiny_smolvlm import LONGEST, SEQ_LEN, TILE, write_smolvlm
from torchchat import artifacts

MAX_SEQ = 256  # two images of 5 and 3 tiles, 16 soft tokens each, and 32 steps
ET_RUN, AOTI_RUN = "runner/et/et_run", "runner/aoti/aoti_run"
LIBS = {"pte": "runner/c_api/libtorchchat_et.so.1", "pt2": "runner/c_api/libtorchchat_aoti.so.1"}


class VisionSmolVLM(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.ckpt = write_smolvlm(cls.tmp / "ckpt")
        # The photo as it is (640x427: 2 x 2 tiles and the whole) and a wide
        # strip of it (1 x 2 tiles and the whole): two layouts.
        photo = Image.open(vc.CHINA).convert("RGB")
        cls.images = [cls.tmp / "a.ppm", cls.tmp / "b.ppm"]
        photo.save(cls.images[0])
        photo.crop((0, 100, 640, 300)).save(cls.images[1])
        out = cls.tmp / "out"
        out.mkdir()
        cls.out = out
        cls.artifacts = {"pte": out / "model.pte", "pt2": out / "model.pt2"}
        argv = ["--checkpoint-path", str(cls.ckpt), "--max-seq-length", str(MAX_SEQ), "--quiet"]
        argv += ["--output-pte-path", str(cls.artifacts["pte"])]
        argv += ["--output-aoti-package-path", str(cls.artifacts["pt2"])]
        assert export_llm.main(argv) == 0
        cls.want = vc.eager_ids(cls.ckpt, cls.images, MAX_SEQ)
        cls.want_chat = vc.eager_chat(cls.ckpt, cls.images, MAX_SEQ)

    def runner(self, kind: str) -> str:
        return ET_RUN if kind == "pte" else AOTI_RUN

    def test_tiles_are_pillows(self):
        import numpy as np

        from torchchat.checkpoint import load_checkpoint
        from torchchat.vision_smolvlm import tile_pixels

        config = load_checkpoint(self.ckpt).vision
        small = self.tmp / "small.ppm"  # upscaled first, odd sides
        Image.open(vc.CHINA).convert("RGB").resize((21, 33)).save(small)
        for path in [*self.images, small]:
            for split in (True, False):
                for resample in (1, 2, 3):
                    with self.subTest(image=path.name, split=split, resample=resample):
                        c = dataclasses.replace(config, split=split, resample=resample)
                        args = [str(path), str(TILE), str(LONGEST), str(int(split)), str(resample)]
                        r = subprocess.run(
                            [str(vc.runfile("runner/common/tile_ppm")), *args],
                            capture_output=True,
                            timeout=60,
                        )
                        self.assertEqual(r.returncode, 0, r.stderr)
                        want = tile_pixels(Image.open(path), c).numpy()
                        got = np.frombuffer(r.stdout, dtype=np.uint8).reshape(want.shape)
                        if path != small or split:
                            self.assertTrue((got == want).all(), "tiles differ from Pillow's")
                        else:
                            # Pillow 13 runs some shrinks' vertical pass first
                            # (40x64 -> 32x32 here); the runners run Pillow's
                            # horizontal-first order always (resample.h).
                            diff = np.abs(got.astype(int) - want.astype(int))
                            self.assertLessEqual(diff.max(), 3)

    def test_metadata(self):
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(self.artifacts["pte"]))
        for m in ("vision_encoder", "token_embedding", "text_decoder", "image_decoder"):
            self.assertIn(m, program.method_names)

        def get(name: str) -> int:
            return program.load_method(name).execute([])[0]

        self.assertEqual(get("get_image_size"), TILE)
        self.assertEqual(get("get_image_tokens"), SEQ_LEN)
        self.assertEqual(get("get_image_longest_edge"), LONGEST)
        self.assertEqual(get("get_image_split"), 1)
        pt2 = self.artifacts["pt2"]
        with zipfile.ZipFile(pt2) as z:
            names = [n.split("/aotinductor/", 1)[1] for n in z.namelist() if "/aotinductor/" in n]
        self.assertEqual({n.split("/")[0] for n in names}, {"model", "vision_encoder"})
        meta = artifacts.parse_pt2_metadata(artifacts.read_pt2_metadata(pt2), pt2)
        self.assertEqual((meta["image_tokens"], meta["longest_edge"]), (SEQ_LEN, LONGEST))

    def test_runners_match_eager(self):
        self.assertGreater(len(self.want), 8)
        for kind, artifact in self.artifacts.items():
            with self.subTest(kind=kind):
                ids = self.out / f"ids-{kind}.json"
                r = vc.runner_generate(
                    self.runner(kind), artifact, self.images, "--ids-json", str(ids)
                )
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                got = json.loads(ids.read_text())["generated"]
                self.assertEqual(got, self.want[: len(got)])
                self.assertGreater(len(got), 8)
                # The C API: the same text from the same images, any size.
                api = vc.c_api("--c-api", LIBS[kind], artifact, self.images)
                self.assertEqual(api["status"], 0, api["error"])
                self.assertEqual(api["image_size"], TILE)
                self.assertEqual(api["text"] + "\n", r.stdout)
        # torchchat generate --image on the package: the same text.
        argv = ["generate", "--aoti-package-path", str(self.artifacts["pt2"]), "--quiet"]
        argv += ["--prompt", vc.PROMPT, "--max-new-tokens", str(vc.STEPS), "--temperature", "0"]
        for p in self.images:
            argv += ["--image", str(p)]
        rc, out, err = cli_harness.run(argv)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, vc.PROMPT + r.stdout)

    def test_chat_matches_eager(self):
        want, prefilled, dropped, _ = self.want_chat
        self.assertGreater(sum(len(w) for w in want), 8)
        for kind, artifact in self.artifacts.items():
            with self.subTest(kind=kind):
                ids = self.out / f"chat-{kind}.json"
                r = vc.runner_chat(self.runner(kind), artifact, self.images, "--ids-json", str(ids))
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                self.assertNotIn("error:", r.stderr)
                got = json.loads(ids.read_text())["turns"]
                self.assertEqual(len(got), len(vc.CHAT))
                for turn, (g, w) in enumerate(zip(got, want)):
                    # The runners' ids end with the stop id, eager's do not.
                    self.assertEqual(g[: len(w)], w, f"turn {turn}")
                    self.assertLessEqual(len(g) - len(w), 1)
                api = vc.c_api("--c-api-chat", LIBS[kind], artifact, self.images)
                self.assertEqual(api["statuses"], [0] * len(vc.CHAT), api["errors"])
                self.assertEqual("".join(t + "\n" for t in api["texts"]), r.stdout)
                self.assertEqual(api["prompt_tokens"][: len(vc.CHAT)], prefilled)
                self.assertEqual(api["dropped"], dropped)

    def test_bad_input_is_one_line(self):
        text = self.tmp / "text.ppm"
        text.write_text("hello")
        for kind, artifact in self.artifacts.items():
            for prompt, image, pattern in [
                (vc.PROMPT, str(text), "not a binary PPM"),
                (f"<image> <image> {vc.PROMPT}", str(self.images[0]), "2 image markers (<image>)"),
            ]:
                with self.subTest(kind=kind, pattern=pattern):
                    r = vc.run([self.runner(kind), str(artifact), "-i", prompt, "--image", image])
                    self.assertEqual(r.returncode, 1, r.stderr)
                    lines = [ln for ln in r.stderr.strip().splitlines() if "error:" in ln]
                    self.assertEqual(len(lines), 1, r.stderr)
                    self.assertIn(pattern, lines[0])


if __name__ == "__main__":
    unittest.main()
