"""generate and chat with images on a tiny random Gemma 3 with a vision
tower: --image, /image, and one-line errors; and on a tiny SmolVLM, the
second family: --image, a plain prompt's marker, --mmproj."""

import importlib.util
import os
import shutil
import unittest
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from testing import tiny_model, tiny_smolvlm, tiny_vision
from testing.cli_harness import CliTestCase, run

# A real photo from a PyPI package in the lock (scikit-learn).
IMAGES = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets/images"
CHINA, FLOWER = str(IMAGES / "china.jpg"), str(IMAGES / "flower.jpg")


class VisionCliTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.ckpt = str(tiny_vision.write_gemma3_vision(self.dir / "g3v"))
        self.base = ["--checkpoint-path", self.ckpt, "--temperature", "0"]
        self.base += ["--max-new-tokens", "12"]

    def ok(self, argv, stdin=""):
        rc, out, err = run(argv, stdin)
        self.assertEqual(rc, 0, err)
        return out

    def test_generate_and_chat_see_the_image(self):
        ask = ["--chat-template", "--prompt", "Hello"]
        china = self.ok(["generate", *self.base, *ask, "--image", CHINA])
        flower = self.ok(["generate", *self.base, *ask, "--image", FLOWER])
        plain = self.ok(["generate", *self.base, "--compile", "none", *ask])
        self.assertNotEqual(china, flower)
        self.assertNotEqual(china, plain)
        # chat's first turn renders as generate --chat-template does, and
        # /image attaches to the next turn as --image does to the first.
        chat = self.ok(["chat", *self.base, "--image", CHINA], "Hello\n")
        self.assertEqual(chat.strip(), "Assistant: " + china.strip())
        chat = self.ok(["chat", *self.base, "--compile", "none"], f"/image {CHINA}\nHello\n")
        self.assertEqual(chat.strip(), "Assistant: " + china.strip())
        # Two images, the second turn's after the first's answer.
        two = self.ok(
            ["chat", *self.base, "--image", CHINA], f"Hello\n/image {FLOWER}\n/image {CHINA}\nHi\n"
        )
        self.assertEqual(len(two.strip().splitlines()), 2, two)
        # A plain prompt takes its images before the text.
        marked = self.ok(
            ["generate", *self.base, "--prompt", "<start_of_image>Hello", "--image", CHINA]
        )
        bare = self.ok(["generate", *self.base, "--prompt", "Hello", "--image", CHINA])
        self.assertEqual(marked.split("Hello", 1)[1], bare.split("Hello", 1)[1])

    def test_mmproj_beside_a_text_checkpoint(self):
        # The text model alone (its vision tensors dropped) and the tower as
        # llama.cpp's mmproj GGUF answer as the whole checkpoint does.
        from safetensors.torch import load_file, save_file

        text = self.dir / "text-only"
        shutil.copytree(self.ckpt, text)
        weights = load_file(str(text / "model.safetensors"))
        kept = {k: v for k, v in weights.items() if k.startswith("language_model")}
        save_file(kept, str(text / "model.safetensors"), metadata={"format": "pt"})
        mmproj = str(tiny_vision.write_mmproj(Path(self.ckpt), self.dir / "mmproj.gguf"))
        ask = ["--chat-template", "--prompt", "Hello", "--image", CHINA]
        want = self.ok(["generate", *self.base, *ask])
        base = ["--checkpoint-path", str(text), "--temperature", "0", "--max-new-tokens", "12"]
        self.assertEqual(self.ok(["generate", *base, "--mmproj", mmproj, *ask]), want)
        self.assert_one_line_error(["generate", *base, *ask], r"--image: this model sees no images")
        self.assert_one_line_error(
            ["generate", *self.base, "--mmproj", mmproj, *ask], r"has its own vision tower"
        )

    def test_one_line_errors(self):
        text = self.dir / "not-an-image.png"
        text.write_text("hello")
        gen = ["generate", *self.base, "--prompt", "Hi"]
        self.assert_one_line_error([*gen, "--image", str(text)], r"not-an-image.png: not an image")
        self.assert_one_line_error([*gen, "--image", str(self.dir / "nope.png")], r"nope.png")
        self.assert_one_line_error(
            [*gen, "--image", CHINA, "--compile", "aoti"],
            r"--image runs the eager model .*drop --compile aoti, or run a \.pt2 exported",
        )
        llama = str(tiny_model.write_checkpoint(self.dir / "tiny"))
        self.assert_one_line_error(
            ["generate", "--checkpoint-path", llama, "--prompt", "Hi", "--image", CHINA],
            r"this model sees no images",
        )
        # In chat a bad /image is one line, and the chat goes on.
        rc, out, err = run(["chat", *self.base, "--compile", "none"], f"/image {text}\nHello\n")
        self.assertEqual(rc, 0, err)
        self.assertIn("not-an-image.png: not an image", err)
        self.assertEqual(len(out.strip().splitlines()), 1, out)


class SmolVLMCliTest(CliTestCase):
    def ok(self, argv, stdin=""):
        rc, out, err = run(argv, stdin)
        self.assertEqual(rc, 0, err)
        return out

    def test_generate_chat_and_mmproj(self):
        from safetensors.torch import load_file, save_file

        ckpt = tiny_smolvlm.write_smolvlm(self.dir / "smolvlm")
        base = ["--temperature", "0", "--max-new-tokens", "12"]
        whole = ["--checkpoint-path", str(ckpt), *base]
        ask = ["--chat-template", "--prompt", "Hello", "--image", CHINA]
        want = self.ok(["generate", *whole, *ask])
        plain = self.ok(
            ["generate", *whole, "--compile", "none", "--chat-template", "--prompt", "Hello"]
        )
        self.assertNotEqual(want, plain)
        chat = self.ok(["chat", *whole, "--image", CHINA], "Hello\n")
        self.assertEqual(chat.strip().removeprefix("Assistant:").strip(), want.strip())
        # A plain prompt takes its images before the text, or at <image>.
        marked = self.ok(["generate", *whole, "--prompt", "<image>Hello", "--image", CHINA])
        bare = self.ok(["generate", *whole, "--prompt", "Hello", "--image", CHINA])
        self.assertEqual(marked.split("Hello", 1)[1], bare.split("Hello", 1)[1])
        # The text model alone and the tower as llama.cpp's idefics3 mmproj.
        text = self.dir / "text-only"
        shutil.copytree(ckpt, text)
        weights = load_file(str(text / "model.safetensors"))
        kept = {
            k: v for k, v in weights.items() if not k.startswith(("model.vision", "model.conn"))
        }
        save_file(kept, str(text / "model.safetensors"), metadata={"format": "pt"})
        mmproj = str(tiny_smolvlm.write_mmproj(ckpt, self.dir / "mmproj.gguf"))
        got = self.ok(["generate", "--checkpoint-path", str(text), *base, "--mmproj", mmproj, *ask])
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main()
