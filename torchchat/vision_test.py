"""Gemma 3's vision tower against transformers: the image processor on a
real photo, and a tiny random Gemma3ForConditionalGeneration's logits and
greedy ids on a text + image prompt."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
import unittest
from pathlib import Path

import torch
import transformers

from testing.tiny_archs import hf_greedy
from testing.tiny_vision import (
    BOI_ID,
    EOI_ID,
    IMAGE_ID,
    MM_TOKENS,
    write_gemma3_vision,
    write_mmproj,
)
from torchchat.checkpoint import CheckpointError, load_checkpoint, load_model
from torchchat.checkpoint.mmproj import load_mmproj
from torchchat.generate import Slot, argmax, decode
from torchchat.model import attend_filled_cache
from torchchat.vision import (
    ImageError,
    ImageSpan,
    Vision,
    VisionConfig,
    build_encoder,
    open_image,
    preprocess,
    read_image,
)

STEPS = 32
# A real photo from a PyPI package in the lock: scikit-learn's
# datasets/images/china.jpg (427 x 640 JPEG).
CHINA = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets/images/china.jpg"


def photo_config(size: int) -> VisionConfig:
    return VisionConfig(32, 64, 1, 4, size, 14, 1e-6, 64, 16, 0, 1, 2)


class VisionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.dir = write_gemma3_vision(cls.tmp / "gemma3-vision")
        cls.ref = transformers.Gemma3ForConditionalGeneration.from_pretrained(cls.dir).eval()
        cls.ckpt = load_checkpoint(cls.dir)
        cls.vision = Vision(build_encoder(cls.ckpt.vision, cls.ckpt.vision_weights))
        img = read_image(CHINA)
        cls.images = [img, img.rotate(90, expand=True)]
        # text, image, text, image, text: each image as the processor expands it.
        g = torch.Generator().manual_seed(5)

        def text(n: int) -> list[int]:
            return torch.randint(3, 300, (n,), generator=g).tolist()

        cls.prompt = text(7) + [IMAGE_ID] * MM_TOKENS + text(5) + [IMAGE_ID] * MM_TOKENS + text(4)

    def test_processor_matches_transformers_on_a_photo(self):
        for size in (896, 32):
            with self.subTest(size=size):
                proc = transformers.Gemma3ImageProcessorPil(size={"height": size, "width": size})
                want = proc(images=read_image(CHINA), return_tensors="pt")["pixel_values"][0]
                got = preprocess(read_image(CHINA), photo_config(size))
                self.assertEqual(got.shape, want.shape)
                self.assertLessEqual((got - want).abs().max().item(), 1e-6)

    def reference(self) -> tuple[torch.Tensor, dict]:
        proc = transformers.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
        pixels = proc(images=self.images, return_tensors="pt")["pixel_values"]
        ids = torch.tensor([self.prompt])
        return ids, dict(pixel_values=pixels, token_type_ids=(ids == IMAGE_ID).long())

    def spans(self) -> list[ImageSpan]:
        return self.vision.spans(self.prompt, self.images)

    def test_logits_match_transformers(self):
        ids, extra = self.reference()
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 128, full_logits=True))
        images = [(s.start, s.embeds) for s in self.spans()]
        with torch.inference_mode():
            want = self.ref(input_ids=ids, **extra).logits
            got = model(ids, torch.arange(ids.shape[1]), images=images)
        self.assertEqual(got.shape, want.shape)
        self.assertLessEqual((got - want).abs().max().item(), 1e-4)

    def test_greedy_ids_through_the_cache(self):
        ids, extra = self.reference()
        want = hf_greedy(self.ref, ids, STEPS, **extra)
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 128))
        slot = Slot(model)
        got = list(decode(slot, self.prompt, argmax, STEPS, images=self.spans()))
        self.assertEqual(got, want)
        # The same prompt again reuses the cache, images included; another
        # image in the second place runs again from there.
        again = list(decode(slot, self.prompt, argmax, STEPS, images=self.spans()))
        self.assertEqual(again, want)
        other = self.vision.spans(self.prompt, [self.images[0], self.images[0]])
        self.assertEqual(slot.reuse(self.prompt, other), other[1].start)
        # An image seen before is not run through the tower again.
        first = self.vision.embed([self.images[1]])[0][0]
        self.assertIs(self.vision.embed([self.images[1]])[0][0], first)

    def test_mmproj_gguf(self):
        # The same tower as llama.cpp's converter writes it: the same config,
        # and the same logits but for its F16 projection's rounding.
        path = write_mmproj(self.dir, self.tmp / "mmproj.gguf")
        config, weights = load_mmproj(path, 64, (BOI_ID, EOI_ID, IMAGE_ID))
        # (The file holds eps as float32.)
        self.assertEqual(dataclasses.replace(config, eps=1e-6), self.ckpt.vision)
        vision = Vision(build_encoder(config, weights))
        spans = vision.spans(self.prompt, self.images)
        for a, b in zip(spans, self.spans()):
            self.assertLessEqual((a.embeds - b.embeds).abs().max().item(), 2e-3)
        ids, extra = self.reference()
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 128, full_logits=True))
        with torch.inference_mode():
            want = self.ref(input_ids=ids, **extra).logits
            got = model(
                ids, torch.arange(ids.shape[1]), images=[(s.start, s.embeds) for s in spans]
            )
        self.assertLessEqual((got - want).abs().max().item(), 2e-3)
        with self.assertRaisesRegex(CheckpointError, "not a GGUF file"):
            load_mmproj(self.dir / "model.safetensors", 64, (0, 1, 2))

    def test_bad_images_are_one_line(self):
        with self.assertRaisesRegex(ImageError, "part 2: not an image"):
            open_image(b"hello", "part 2")
        data = CHINA.read_bytes()
        with self.assertRaisesRegex(ImageError, "part 1: cannot be decoded"):
            open_image(data[: len(data) // 2], "part 1")
        with self.assertRaisesRegex(ImageError, "too large"):
            open_image(data, "x", max_pixels=100)


if __name__ == "__main__":
    unittest.main()
