"""A Gemma 3 checkpoint with a vision tower exports to a .pte with
ExecuTorch's multimodal methods, and et_run --image gives eager's greedy
ids: a tiny random Gemma3ForConditionalGeneration (testing.tiny_vision), a
real photo (scikit-learn's china.jpg) at the tower's size as a PPM, two
images in the prompt; in chat (et_run -m chat --image, /image, and the C
API's torchchat_chat_turn_with_images), eager chat's ids turn by turn.
"""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from PIL import Image

from export import export_llm
from testing import cli_harness
from testing.tiny_vision import IMAGE_SIZE, write_gemma3_vision
from torchchat import tokenizer as tc_tokenizer
from torchchat.checkpoint import load_checkpoint, load_model
from torchchat.generate import Slot, argmax, decode
from torchchat.vision import Vision, build_encoder, expand_images, read_image, with_markers

MAX_SEQ = 128
STEPS = 32
PROMPT = "Once upon a time"
# A chat: the first image with the first turn, the second by /image with the
# second, then a turn of text only, for which the context (MAX_SEQ) forgets
# the first exchange, its image with it.
CHAT = [("Describe it.", 0), ("What now?", 1), ("And then?", None)]
CHAT_STEPS = 10
CHINA = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets/images/china.jpg"


def _runfile(path: str) -> Path:
    return Path(os.environ["TEST_SRCDIR"]) / "_main" / path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_runfile(args[0])), *args[1:]], capture_output=True, text=True, timeout=600
    )


class VisionPte(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")))
        cls.ckpt = write_gemma3_vision(cls.tmp / "ckpt")
        photo = Image.open(CHINA).convert("RGB")
        size = (IMAGE_SIZE, IMAGE_SIZE)
        cls.images = [cls.tmp / "a.ppm", cls.tmp / "b.ppm"]
        photo.resize(size, Image.BILINEAR).save(cls.images[0])
        photo.rotate(90, expand=True).resize(size, Image.BILINEAR).save(cls.images[1])
        cls.out = cls.tmp / "out"
        cls.out.mkdir()
        cls.pte = cls.out / "model.pte"
        rc = export_llm.main(
            [
                "--checkpoint-path",
                str(cls.ckpt),
                "--output-pte-path",
                str(cls.pte),
                "--max-seq-length",
                str(MAX_SEQ),
                "--quiet",
            ]
        )
        assert rc == 0

    def eager_ids(self) -> list[int]:
        """torchchat generate --image's ids, from its own functions."""
        ckpt = load_checkpoint(self.ckpt)
        vision = Vision(build_encoder(ckpt.vision, ckpt.vision_weights))
        tok = tc_tokenizer.load(self.ckpt / "tokenizer.json")
        images = [read_image(p) for p in self.images]
        text = expand_images(with_markers(PROMPT, 2, tok, vision.config), tok, vision.config)
        ids = tok.encode(text, bos=tok.add_bos)
        model = load_model(ckpt, torch.float32, MAX_SEQ)
        return list(decode(Slot(model), ids, argmax, STEPS, images=vision.spans(ids, images)))

    def eager_chat(self) -> tuple[list[list[int]], list[int], list[int], int]:
        """torchchat chat --image's session: each turn's ids, prompt tokens
        prefilled and exchanges forgotten, and the most the second turn may
        prefill when its cache keeps the first image: what follows it."""
        from torchchat.generate import ChatSession

        ckpt = load_checkpoint(self.ckpt)
        vision = Vision(build_encoder(ckpt.vision, ckpt.vision_weights))
        tok = tc_tokenizer.load(self.ckpt / "tokenizer.json")
        template = tok.template()
        assert template is not None
        slot = Slot(load_model(ckpt, torch.float32, MAX_SEQ))
        session = ChatSession(slot, tok, template, None, vision)
        turns, prefilled, dropped, after_first_image = [], [], [], 0
        for text, image in CHAT:
            images = [read_image(self.images[image])] if image is not None else []
            reply = session.turn(text, argmax, CHAT_STEPS, images=images)
            turns.append(reply.ids)
            prefilled.append(reply.stats.num_prompt_tokens)
            dropped.append(session.dropped_last_turn)
            if len(turns) == 2:
                after_first_image = len(slot.tokens) - min(s.end for s in slot.images)
        return turns, prefilled, dropped, after_first_image

    def et_run_chat(self, *extra: str) -> subprocess.CompletedProcess:
        args = ["runner/et/et_run", str(self.pte), "-m", "chat", "-n", str(CHAT_STEPS)]
        args += ["-i", CHAT[0][0], "--image", str(self.images[0])]
        stdin = "".join(
            (f"/image {self.images[image]}\n" if image is not None else "") + text + "\n"
            for text, image in CHAT[1:]
        )
        return subprocess.run(
            [str(_runfile(args[0])), *args[1:], *extra],
            input=stdin + "/exit\n",
            capture_output=True,
            text=True,
            timeout=600,
        )

    def et_run(self, *extra: str) -> subprocess.CompletedProcess:
        args = ["runner/et/et_run", str(self.pte), "-i", PROMPT, "-n", str(STEPS)]
        for p in self.images:
            args += ["--image", str(p)]
        return _run(args + list(extra))

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
        argv += ["--prompt", PROMPT, "--max-new-tokens", str(STEPS), "--temperature", "0"]
        argv += ["--max-seq-length", str(MAX_SEQ), "--quiet"]
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
        r = subprocess.run(
            [sys.executable, __file__, "--c-api-chat", str(self.pte), *map(str, self.images)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        got = json.loads(r.stdout.strip().splitlines()[-1])
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
        # In its own process: ExecuTorch's Python runtime, loaded here, and
        # the library's copy of the kernels cannot share one.
        r = subprocess.run(
            [sys.executable, __file__, "--c-api", str(self.pte), *map(str, self.images)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        got = json.loads(r.stdout.strip().splitlines()[-1])
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
            (["runner/aoti/aoti_run", str(text_pt2)], str(small), "a .pt2 has none"),
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


class Img(ctypes.Structure):
    _fields_ = [("rgb", ctypes.c_char_p), ("width", ctypes.c_int32), ("height", ctypes.c_int32)]


class Stats(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_double)
        for n in (
            "model_load_start_ms",
            "model_load_end_ms",
            "inference_start_ms",
            "prompt_eval_end_ms",
            "first_token_ms",
            "inference_end_ms",
        )
    ] + [
        ("num_prompt_tokens", ctypes.c_int64),
        ("num_generated_tokens", ctypes.c_int64),
        ("peak_rss_bytes", ctypes.c_int64),
        ("stop_reason", ctypes.c_int),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("max_new_tokens", ctypes.c_int64),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repetition_penalty", ctypes.c_float),
        ("seed", ctypes.c_uint64),
    ]


def c_api_run(pte: str, image_paths: list[str]) -> dict:
    """torchchat_generate_with_images on `pte` through libtorchchat_et.so."""
    lib = ctypes.CDLL(str(_runfile("runner/c_api/libtorchchat_et.so.1")))
    cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
    vp = ctypes.c_void_p
    lib.torchchat_last_error.restype = ctypes.c_char_p
    lib.torchchat_runner_create.argtypes = [ctypes.c_char_p, vp, vp]
    lib.torchchat_runner_image_size.restype = ctypes.c_int64
    lib.torchchat_runner_image_size.argtypes = [vp]
    lib.torchchat_default_generation_config.restype = Config
    lib.torchchat_generate_with_images.argtypes = [
        vp,
        ctypes.c_char_p,
        ctypes.POINTER(Img),
        ctypes.c_size_t,
        ctypes.POINTER(Config),
        cb_type,
        vp,
        vp,
    ]
    lib.torchchat_runner_free.argtypes = [vp]
    h = ctypes.c_void_p()
    if lib.torchchat_runner_create(pte.encode(), None, ctypes.byref(h)) != 0:
        raise RuntimeError(lib.torchchat_last_error().decode())
    pixels = [Image.open(p).tobytes() for p in image_paths]
    images = (Img * len(pixels))(*(Img(b, IMAGE_SIZE, IMAGE_SIZE) for b in pixels))
    config = lib.torchchat_default_generation_config()
    config.max_new_tokens = STEPS
    pieces: list[bytes] = []
    cb = cb_type(lambda text, n, _: pieces.append(ctypes.string_at(text, n)) or 0)
    out = {"api_version": lib.torchchat_api_version(), "image_size": 0}
    out["image_size"] = lib.torchchat_runner_image_size(h)
    args = (ctypes.byref(config), cb, None, None)
    out["status"] = lib.torchchat_generate_with_images(
        h, PROMPT.encode(), images, len(pixels), *args
    )
    out["error"] = lib.torchchat_last_error().decode()
    out["text"] = b"".join(pieces).decode()
    marked = b"<start_of_image> and <start_of_image>"
    out["mismatch_status"] = lib.torchchat_generate_with_images(h, marked, images, 1, *args)
    out["mismatch_error"] = lib.torchchat_last_error().decode()
    lib.torchchat_runner_free(h)
    return out


def c_api_chat(pte: str, image_paths: list[str]) -> dict:
    """CHAT through torchchat_chat_turn_with_images, then bad images."""
    lib = ctypes.CDLL(str(_runfile("runner/c_api/libtorchchat_et.so.1")))
    cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
    vp = ctypes.c_void_p
    lib.torchchat_last_error.restype = ctypes.c_char_p
    lib.torchchat_runner_create.argtypes = [ctypes.c_char_p, vp, vp]
    lib.torchchat_chat_create.argtypes = [vp, ctypes.c_char_p, vp]
    lib.torchchat_default_generation_config.restype = Config
    lib.torchchat_chat_turn_with_images.argtypes = [
        vp,
        ctypes.c_char_p,
        ctypes.POINTER(Img),
        ctypes.c_size_t,
        ctypes.POINTER(Config),
        cb_type,
        vp,
        ctypes.POINTER(Stats),
    ]
    lib.torchchat_chat_free.argtypes = [vp]
    lib.torchchat_runner_free.argtypes = [vp]
    h, chat = ctypes.c_void_p(), ctypes.c_void_p()
    if lib.torchchat_runner_create(pte.encode(), None, ctypes.byref(h)) != 0:
        raise RuntimeError(lib.torchchat_last_error().decode())
    if lib.torchchat_chat_create(h, None, ctypes.byref(chat)) != 0:
        raise RuntimeError(lib.torchchat_last_error().decode())
    config = lib.torchchat_default_generation_config()
    config.max_new_tokens = CHAT_STEPS
    pieces: list[bytes] = []
    cb = cb_type(lambda text, n, _: pieces.append(ctypes.string_at(text, n)) or 0)
    lib.torchchat_chat_dropped_last_turn.argtypes = [vp]
    out: dict = {"statuses": [], "errors": [], "texts": [], "prompt_tokens": [], "dropped": []}

    def turn(text: str, images: list[Img]) -> tuple[int, str]:
        pieces.clear()
        stats = Stats()
        arr = (Img * len(images))(*images) if images else None
        status = lib.torchchat_chat_turn_with_images(
            chat, text.encode(), arr, len(images), ctypes.byref(config), cb, None, stats
        )
        out["prompt_tokens"].append(stats.num_prompt_tokens)
        return status, lib.torchchat_last_error().decode()

    pixels = [Image.open(p).tobytes() for p in image_paths]
    for text, image in CHAT:
        images = [Img(pixels[image], IMAGE_SIZE, IMAGE_SIZE)] if image is not None else []
        status, error = turn(text, images)
        out["statuses"].append(status)
        out["errors"].append(error)
        out["texts"].append(b"".join(pieces).decode())
        out["dropped"].append(lib.torchchat_chat_dropped_last_turn(chat))
    out["small_status"], out["small_error"] = turn("Hi", [Img(bytes(8 * 8 * 3), 8, 8)])
    one = [Img(pixels[0], IMAGE_SIZE, IMAGE_SIZE)]
    out["places_status"], out["places_error"] = turn("<start_of_image> Hi", one)
    out["after_status"], _ = turn("Hi", [])
    lib.torchchat_chat_free(chat)
    lib.torchchat_runner_free(h)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--c-api"]:
        print(json.dumps(c_api_run(sys.argv[2], sys.argv[3:])))
    elif sys.argv[1:2] == ["--c-api-chat"]:
        print(json.dumps(c_api_chat(sys.argv[2], sys.argv[3:])))
    else:
        unittest.main()
