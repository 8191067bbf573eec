"""SmolVLM, the second vision family, against transformers: its processor's
tiles on a real photo, where its chat template and processor put an image's
tokens, and a tiny random SmolVLMForConditionalGeneration's logits and
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
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from testing.tiny_archs import hf_greedy
from testing.tiny_smolvlm import (
    FAKE,
    GLOBAL,
    IMAGE,
    IMAGE_ID,
    LONGEST,
    SEQ_LEN,
    TILE,
    template,
    write_mmproj,
    write_smolvlm,
)
from torchchat.checkpoint import CheckpointError, load_checkpoint, load_model
from torchchat.checkpoint.mmproj import load_mmproj, load_mmproj_smolvlm
from torchchat.generate import ChatSession, Slot, argmax, decode
from torchchat.model import attend_filled_cache
from torchchat.tokenizer import load as load_tokenizer
from torchchat.vision import ImageError, read_image
from torchchat.vision_smolvlm import SmolVLMConfig, SmolVLMVision, build_vision, grid, preprocess

STEPS = 32
# A real photo from a PyPI package in the lock: scikit-learn's
# datasets/images/china.jpg (427 x 640 JPEG).
CHINA = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets/images/china.jpg"


def photo_config(longest: int, tile: int, split: bool = True) -> SmolVLMConfig:
    return SmolVLMConfig(32, 64, 1, 4, tile, 16, 1e-6, 64, 2, 0, longest, split)


class SmolVLMTest(unittest.TestCase):
    FAMILY = "smolvlm"

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.dir = write_smolvlm(cls.tmp / cls.FAMILY, family=cls.FAMILY)
        smolvlm = cls.FAMILY == "smolvlm"
        model = (
            transformers.SmolVLMForConditionalGeneration
            if smolvlm
            else transformers.Idefics3ForConditionalGeneration
        )
        cls.ref = model.from_pretrained(cls.dir).eval()
        cls.hf_tok = transformers.AutoTokenizer.from_pretrained(cls.dir)
        proc = (
            transformers.SmolVLMImageProcessorPil
            if smolvlm
            else transformers.Idefics3ImageProcessorPil
        )
        cls.proc = proc.from_pretrained(cls.dir)
        cls.ckpt = load_checkpoint(cls.dir)
        cls.vision = build_vision(cls.ckpt.vision, cls.ckpt.vision_weights)
        c = cls.ckpt
        cls.tok = load_tokenizer(c.tokenizer_path, c.chat_template, c.bos_id, c.eos_ids, c.add_bos)
        img = read_image(CHINA)
        # 2 x 2 tiles and the whole; a wide strip: 1 x 2 and the whole; a
        # small tall one, scaled up as the processor does: 2 x 1 and the whole.
        cls.images = [img, img.resize((200, 40)), img.resize((6, 40))]
        cls.messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "What is this? And this:"},
                    {"type": "image"},
                ],
            },
            {"role": "assistant", "content": "A temple and a strip."},
            {"role": "user", "content": [{"type": "text", "text": "Now"}, {"type": "image"}]},
        ]

    def test_processor_matches_transformers_on_a_photo(self):
        photo = read_image(CHINA)
        sizes = ((2048, 512, True), (1536, 384, True), (64, 32, True), (64, 32, False))
        for longest, tile, split in sizes:
            # An odd width after the first resize (rounded up to even).
            for im in (photo, photo.rotate(90, expand=True), photo.resize((6, 40))):
                with self.subTest(longest=longest, tile=tile, split=split, size=im.size):
                    proc = transformers.SmolVLMImageProcessorPil(
                        size={"longest_edge": longest},
                        max_image_size={"longest_edge": tile},
                        do_image_splitting=split,
                    )
                    out = proc(images=[im], return_tensors="pt", return_row_col_info=True)
                    want = out["pixel_values"][0]
                    c = photo_config(longest, tile, split)
                    got = preprocess(im, c)
                    self.assertEqual(got.shape, want.shape)
                    self.assertLessEqual((got - want).abs().max().item(), 1e-6)
                    self.assertEqual(grid(im.size, c), (out["rows"][0][0], out["cols"][0][0]))

    def reference(self) -> tuple[torch.Tensor, dict]:
        """transformers' prompt: its chat template, each <image> expanded as
        SmolVLM's processor does, and its pixels."""
        text = self.hf_tok.apply_chat_template(
            self.messages, chat_template=template(), tokenize=False, add_generation_prompt=True
        )
        out = self.proc(images=[self.images], return_tensors="pt", return_row_col_info=True)
        pieces = text.split(IMAGE)
        parts = [pieces[0]]
        for r, c, rest in zip(out["rows"][0], out["cols"][0], pieces[1:]):
            parts += [get_image_prompt_string(r, c, SEQ_LEN, FAKE, IMAGE, GLOBAL), rest]
        ids = self.hf_tok("".join(parts), add_special_tokens=False, return_tensors="pt").input_ids
        pixels = dict(
            pixel_values=out["pixel_values"], pixel_attention_mask=out["pixel_attention_mask"]
        )
        return ids, pixels

    def prompt(self) -> list[int]:
        """torchchat's prompt for the same conversation."""
        template = self.tok.template()
        assert template is not None
        text = template.render(self.messages, add_generation_prompt=True)
        text = self.vision.expand(text, self.tok, [im.size for im in self.images])
        return self.tok.encode(text, bos=False)

    def test_prompt_places_images_as_transformers(self):
        ids, _ = self.reference()
        self.assertEqual(self.prompt(), ids[0].tolist())
        self.assertEqual(ids[0].tolist().count(IMAGE_ID), (5 + 3 + 3) * SEQ_LEN)
        with self.assertRaisesRegex(ImageError, "2 image markers"):
            self.vision.expand(f"{IMAGE}a{IMAGE}", self.tok, [(1, 1)])

    def test_logits_match_transformers(self):
        ids, pixels = self.reference()
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 512, full_logits=True))
        spans = self.vision.spans(self.prompt(), self.images)
        self.assertEqual(len(spans), 5 + 3 + 3)
        with torch.inference_mode():
            want = self.ref(input_ids=ids, **pixels).logits
            got = model(
                ids, torch.arange(ids.shape[1]), images=[(s.start, s.embeds) for s in spans]
            )
        self.assertEqual(got.shape, want.shape)
        self.assertLessEqual((got - want).abs().max().item(), 1e-4)

    def test_greedy_ids_through_the_cache(self):
        ids, pixels = self.reference()
        want = hf_greedy(self.ref, ids, STEPS, pad_token_id=2, **pixels)
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 512))
        slot = Slot(model)
        prompt = self.prompt()
        got = list(
            decode(slot, prompt, argmax, STEPS, images=self.vision.spans(prompt, self.images))
        )
        self.assertEqual(got, want)
        # The same prompt reuses the cache, images included; another last
        # image runs again from its first tile.
        spans = self.vision.spans(prompt, self.images)
        self.assertEqual(list(decode(slot, prompt, argmax, STEPS, images=spans)), want)
        other = self.vision.spans(prompt, [*self.images[:2], self.images[2].rotate(180)])
        self.assertEqual(slot.reuse(prompt, other), spans[8].start)

    def test_chat_session_turns(self):
        # The chat REPL's path: the template, the expansion and the spans
        # from the session's stored images, turn after turn.
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 512))
        template = self.tok.template()
        assert template is not None
        session = ChatSession(Slot(model), self.tok, template, None, self.vision)
        session.turn("What is this? And this:", argmax, 4, images=self.images[:2])
        reply = session.turn("Now", argmax, 4, images=self.images[2:])
        self.assertEqual(len(reply.ids), 4)
        self.assertEqual(len(session.sizes[0]), 2)

    def test_wrong_places_are_one_line(self):
        prompt = self.prompt()
        with self.assertRaisesRegex(ImageError, "places for 11 tiles, the images have 8"):
            self.vision.spans(prompt, self.images[:2])
        cut = prompt[: prompt.index(IMAGE_ID) + 3] + prompt[prompt.index(IMAGE_ID) + SEQ_LEN :]
        with self.assertRaisesRegex(
            ImageError, f"a tile takes {SEQ_LEN} soft tokens; the prompt has 3"
        ):
            self.vision.spans(cut, self.images)

    def test_mmproj_gguf(self):
        # The same tower as llama.cpp's converter writes it: the same config,
        # and the same logits but for its F16 matrices' rounding (every
        # matrix of the tower, unlike Gemma 3's file: hence 1e-2).
        path = write_mmproj(self.dir, self.tmp / f"mmproj-{self.FAMILY}.gguf")
        config, weights = load_mmproj_smolvlm(path, 64, IMAGE_ID)
        # (The file holds eps as float32.)
        self.assertEqual(dataclasses.replace(config, eps=1e-6), self.ckpt.vision)
        vision = build_vision(config, weights)
        prompt = self.prompt()
        spans = vision.spans(prompt, self.images)
        for a, b in zip(spans, self.vision.spans(prompt, self.images)):
            self.assertLessEqual((a.embeds - b.embeds).abs().max().item(), 1e-2)
        ids, pixels = self.reference()
        model = attend_filled_cache(load_model(self.ckpt, torch.float32, 512, full_logits=True))
        with torch.inference_mode():
            want = self.ref(input_ids=ids, **pixels).logits
            got = model(
                ids, torch.arange(ids.shape[1]), images=[(s.start, s.embeds) for s in spans]
            )
        self.assertLessEqual((got - want).abs().max().item(), 2e-3)
        with self.assertRaisesRegex(CheckpointError, "not Gemma 3's gemma3"):
            load_mmproj(path, 64, (0, 1, 2))

    def test_tiny_config(self):
        self.assertIsInstance(self.vision, SmolVLMVision)
        self.assertEqual(
            (self.ckpt.vision.image_size, self.ckpt.vision.longest_edge), (TILE, LONGEST)
        )


class Idefics3Test(SmolVLMTest):
    """The same on Idefics3ForConditionalGeneration, as SmolVLM v1
    checkpoints (SmolVLM-256M-Instruct) are saved."""

    FAMILY = "idefics3"


if __name__ == "__main__":
    unittest.main()
