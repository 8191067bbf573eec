"""What //export:vision_pte_test and //export:vision_pt2_test share: the
tiny Gemma 3 with its tower and two images (a real photo, scikit-learn's
china.jpg, and the same rotated, as PPMs at the tower's size), eager's ids
for the prompt and the chat, a runner's command line, and the C API
through ctypes (run as `python vision_cases.py --c-api[-chat] LIB ARTIFACT
IMAGES...`, in a process of its own without torch: ExecuTorch's Python
runtime and libtorchchat_et.so's copy of the kernels cannot share one, nor
torch's libraries and the ones libtorchchat_aoti.so links).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from testing import c_api as capi

MAX_SEQ = 128
STEPS = 32
PROMPT = "Once upon a time"
# A chat: the first image with the first turn, the second by /image with the
# second, then a turn of text only, for which the context (MAX_SEQ) forgets
# the first exchange, its image with it.
CHAT = [("Describe it.", 0), ("What now?", 1), ("And then?", None)]
CHAT_STEPS = 10
_SKLEARN = importlib.util.find_spec("sklearn")
assert _SKLEARN is not None and _SKLEARN.origin is not None
CHINA = Path(_SKLEARN.origin).parent / "datasets/images/china.jpg"


def runfile(path: str) -> Path:
    return Path(os.environ["TEST_SRCDIR"]) / "_main" / path


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """A runner (its runfiles path first) with `args`."""
    return subprocess.run(
        [str(runfile(args[0])), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_case(tmp: Path) -> tuple[Path, list[Path]]:
    """The checkpoint and the two images, under `tmp`."""
    from testing.tiny_vision import IMAGE_SIZE, write_gemma3_vision

    ckpt = write_gemma3_vision(tmp / "ckpt")
    photo = Image.open(CHINA).convert("RGB")
    size = (IMAGE_SIZE, IMAGE_SIZE)
    images = [tmp / "a.ppm", tmp / "b.ppm"]
    photo.resize(size, Image.Resampling.BILINEAR).save(images[0])
    photo.rotate(90, expand=True).resize(size, Image.Resampling.BILINEAR).save(images[1])
    return ckpt, images


def export_case(tmp: Path, flag: str, name: str) -> tuple[Path, list[Path], Path]:
    """The case written under `tmp` and exported by export_llm's command
    line with `flag` (--output-pte-path or --output-aoti-package-path) to
    `tmp/out/name`: the checkpoint, the images and the artifact."""
    from export import export_llm

    ckpt, images = write_case(tmp)
    (tmp / "out").mkdir()
    artifact = tmp / "out" / name
    argv = ["--checkpoint-path", str(ckpt), flag, str(artifact)]
    rc = export_llm.main([*argv, "--max-seq-length", str(MAX_SEQ), "--quiet"])
    assert rc == 0, f"export_llm {flag} exited with {rc}"
    return ckpt, images, artifact


def tower(ckpt: Any) -> Any:
    """The checkpoint's ImageTower (Gemma 3's or SmolVLM's), fp32."""
    from torchchat.vision import Vision, VisionConfig, build_encoder
    from torchchat.vision_smolvlm import build_vision

    if isinstance(ckpt.vision, VisionConfig):
        return Vision(build_encoder(ckpt.vision, ckpt.vision_weights))
    return build_vision(ckpt.vision, ckpt.vision_weights)


def eager_ids(
    ckpt_dir: Path, images: list[Path], max_seq: int = MAX_SEQ, quantize: dict | None = None
) -> list[int]:
    """torchchat generate --image's ids for PROMPT, from its own functions;
    `quantize` (torchchat.quantize's spec) quantizes the text model first."""
    import torch

    from torchchat import tokenizer as tc_tokenizer
    from torchchat.checkpoint import load_checkpoint, load_model
    from torchchat.generate import Slot, argmax, decode
    from torchchat.vision import read_image

    ckpt = load_checkpoint(ckpt_dir)
    vision = tower(ckpt)
    tok = tc_tokenizer.load(ckpt_dir / "tokenizer.json")
    pics = [read_image(p) for p in images]
    marked = vision.with_markers(PROMPT, len(pics), tok)
    text = vision.expand(marked, tok, [p.size for p in pics])
    ids = tok.encode(text, bos=tok.add_bos)
    model = load_model(ckpt, torch.float32, max_seq)
    if quantize:
        from torchchat.quantize import quantize_model

        quantize_model(model, quantize)
    return list(decode(Slot(model), ids, argmax, STEPS, images=vision.spans(ids, pics)))


def eager_chat(
    ckpt_dir: Path, images: list[Path], max_seq: int = MAX_SEQ
) -> tuple[list[list[int]], list[int], list[int], int]:
    """torchchat chat --image's session over CHAT: each turn's ids, prompt
    tokens prefilled and exchanges forgotten, and the most the second turn
    may prefill when its cache keeps the first image: what follows it."""
    import torch

    from torchchat import tokenizer as tc_tokenizer
    from torchchat.checkpoint import load_checkpoint, load_model
    from torchchat.generate import ChatSession, Slot, argmax
    from torchchat.vision import read_image

    ckpt = load_checkpoint(ckpt_dir)
    vision = tower(ckpt)
    tok = tc_tokenizer.load(ckpt_dir / "tokenizer.json")
    template = tok.template()
    assert template is not None
    slot = Slot(load_model(ckpt, torch.float32, max_seq))
    session = ChatSession(slot, tok, template, None, vision)
    turns, prefilled, dropped, after_first_image = [], [], [], 0
    for text, image in CHAT:
        pics = [read_image(images[image])] if image is not None else []
        reply = session.turn(text, argmax, CHAT_STEPS, images=pics)
        turns.append(reply.ids)
        prefilled.append(reply.stats.num_prompt_tokens)
        dropped.append(session.dropped_last_turn)
        if len(turns) == 2:
            after_first_image = len(slot.tokens) - min(s.end for s in slot.images)
    return turns, prefilled, dropped, after_first_image


def runner_generate(runner: str, artifact: Path, images: list[Path], *extra: str):  # noqa: ANN201
    """`runner` (et_run, aoti_run) on PROMPT with both images."""
    args = [runner, str(artifact), "-i", PROMPT, "-n", str(STEPS)]
    for p in images:
        args += ["--image", str(p)]
    return run(args + list(extra))


def runner_chat(runner: str, artifact: Path, images: list[Path], *extra: str):  # noqa: ANN201
    """`runner` -m chat over CHAT: --image with the first turn, /image after."""
    args = [runner, str(artifact), "-m", "chat", "-n", str(CHAT_STEPS)]
    args += ["-i", CHAT[0][0], "--image", str(images[0]), *extra]
    stdin = "".join(
        (f"/image {images[image]}\n" if image is not None else "") + text + "\n"
        for text, image in CHAT[1:]
    )
    return run(args, stdin + "/exit\n")


def c_api(mode: str, lib: str, artifact: Path, images: list[Path]) -> dict:
    """c_api_run or c_api_chat in a process of its own."""
    r = subprocess.run(
        [sys.executable, __file__, mode, lib, str(artifact), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise AssertionError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _collect(pieces: list[bytes]) -> Any:
    """A CALLBACK that appends each piece of text to `pieces`."""

    def on_text(text: bytes, n: int, _: object) -> int:
        pieces.append(ctypes.string_at(text, n))
        return 0

    return capi.CALLBACK(on_text)


def _open(lib_path: str, artifact: str) -> tuple[ctypes.CDLL, ctypes.c_void_p]:
    lib = capi.load(str(runfile(lib_path)))
    h = ctypes.c_void_p()
    if lib.torchchat_runner_create(artifact.encode(), None, ctypes.byref(h)) != 0:
        raise RuntimeError(lib.torchchat_last_error().decode())
    return lib, h


def c_api_run(lib_path: str, artifact: str, image_paths: list[str]) -> dict:
    """torchchat_generate_with_images on PROMPT and both images."""
    lib, h = _open(lib_path, artifact)
    pics = [Image.open(p) for p in image_paths]
    size = lib.torchchat_runner_image_size(h)
    images = (capi.Image * len(pics))(*(capi.Image(p.tobytes(), *p.size) for p in pics))
    config = lib.torchchat_default_generation_config()
    config.max_new_tokens = STEPS
    pieces: list[bytes] = []
    cb = _collect(pieces)
    out = {"api_version": lib.torchchat_api_version(), "image_size": 0}
    out["image_size"] = size
    args = (ctypes.byref(config), cb, None, None)
    out["status"] = lib.torchchat_generate_with_images(h, PROMPT.encode(), images, len(pics), *args)
    out["error"] = lib.torchchat_last_error().decode()
    out["text"] = b"".join(pieces).decode()
    marked = b"<start_of_image> and <start_of_image>"
    out["mismatch_status"] = lib.torchchat_generate_with_images(h, marked, images, 1, *args)
    out["mismatch_error"] = lib.torchchat_last_error().decode()
    lib.torchchat_runner_free(h)
    return out


def c_api_chat(lib_path: str, artifact: str, image_paths: list[str]) -> dict:
    """CHAT through torchchat_chat_turn_with_images, then bad images."""
    lib, h = _open(lib_path, artifact)
    chat = ctypes.c_void_p()
    if lib.torchchat_chat_create(h, None, ctypes.byref(chat)) != 0:
        raise RuntimeError(lib.torchchat_last_error().decode())
    config = lib.torchchat_default_generation_config()
    config.max_new_tokens = CHAT_STEPS
    pieces: list[bytes] = []
    cb = _collect(pieces)
    out: dict = {"statuses": [], "errors": [], "texts": [], "prompt_tokens": [], "dropped": []}

    def turn(text: str, images: list[capi.Image]) -> tuple[int, str]:
        pieces.clear()
        stats = capi.Stats()
        arr = (capi.Image * len(images))(*images) if images else None
        status = lib.torchchat_chat_turn_with_images(
            chat, text.encode(), arr, len(images), ctypes.byref(config), cb, None, stats
        )
        out["prompt_tokens"].append(stats.num_prompt_tokens)
        return status, lib.torchchat_last_error().decode()

    pics = [Image.open(p) for p in image_paths]
    pixels = [p.tobytes() for p in pics]
    size = lib.torchchat_runner_image_size(h)
    for text, image in CHAT:
        images = [capi.Image(pixels[image], *pics[image].size)] if image is not None else []
        status, error = turn(text, images)
        out["statuses"].append(status)
        out["errors"].append(error)
        out["texts"].append(b"".join(pieces).decode())
        out["dropped"].append(lib.torchchat_chat_dropped_last_turn(chat))
    out["small_status"], out["small_error"] = turn("Hi", [capi.Image(bytes(8 * 8 * 3), 8, 8)])
    one = [capi.Image(pixels[0], size, size)]
    out["places_status"], out["places_error"] = turn("<start_of_image> Hi", one)
    out["after_status"], _ = turn("Hi", [])
    lib.torchchat_chat_free(chat)
    lib.torchchat_runner_free(h)
    return out


if __name__ == "__main__":
    fn = {"--c-api": c_api_run, "--c-api-chat": c_api_chat}[sys.argv[1]]
    print(json.dumps(fn(sys.argv[2], sys.argv[3], sys.argv[4:])))
