"""Our `--mmproj` reading against llama.cpp's own mtmd, on a text + image prompt.

    tools/bazel run //testing:llama_cpp_mtmd_parity

Writes testing.tiny_vision's tiny random Gemma3ForConditionalGeneration
(a 2-layer SigLIP on 32 x 32 images, 16 soft tokens, 3 text layers) and
converts it with llama.cpp's own convert_hf_to_gguf.py (the pinned sdist's
source tree, peers/llama_cpp.py) into a text GGUF and an mmproj GGUF
(`--mmproj`), both F32 but for the projection the converter forces to F16.
Then one prompt, `text <image> text`, runs through llama-cpp-python's mtmd
(mtmd_tokenize, mtmd_encode_chunk, mtmd_helper_eval_chunks, then greedy
llama_decode) and through torchchat's loader with --mmproj (eager), and
prints per image: the image embeddings' largest difference, the logits'
after the prompt, and whether the greedy ids agree. Exits 1 if the same
pixels give embeddings more than 1e-2 apart, logits more than 1e-3
apart, or other greedy ids.

The image is scikit-learn's datasets/images/china.jpg (427 x 640), three ways:
- `same pixels`: already 32 x 32 (resized by torchchat's preprocessing), so
  llama.cpp does not resize it: the towers and text models alone differ;
- `own preprocessing`: the photo itself; llama.cpp letterboxes it (keeps its
  aspect, pads black: PAD_CEIL in tools/mtmd/clip.cpp), transformers and
  torchchat stretch it to a square, so this row measures that choice;
- `letterboxed`: the photo to llama.cpp, and to torchchat the same
  letterbox made with Pillow: what is left is llama.cpp's port of Pillow's
  bilinear resize against Pillow's.

What the converter cannot take from the tiny checkpoint as saved is
adjusted, touching no weight: the vision tensors get the names Gemma 3
checkpoints on the Hub have (`vision_tower.vision_model.*`, which this
transformers no longer writes), the tokenizer's pre-tokenizer, unknown to
the converter's hash table, is named `gpt-2` (the byte-level BPE it is),
and the processor config gets Gemma 3's `image_seq_length` (without it the
converter, and so llama.cpp and our reader alike, pool to 4 tokens).

Not a test target: llama-cpp-python takes about 7 minutes to build
(peers/llama_cpp.py builds it on first use).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHINA = "datasets/images/china.jpg"
PROMPT = ("Once upon a time ", " there was a little")
# The converter run with the two adjustments the module docstring names.
CONVERT = """
import runpy, sys
src = sys.argv.pop(1)
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def hub_layout(ckpt: Path, out: Path) -> Path:
    """`ckpt` as the converter expects a Gemma 3 checkpoint (see docstring)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(ckpt, out)
    w = load_file(str(out / "model.safetensors"))
    w = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in w.items()}
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    # A Gemma 3 processor's own config names its soft tokens per image; the
    # converter derives the projector's pooling from it (default 256).
    proc = json.loads((out / "preprocessor_config.json").read_text())
    proc["image_seq_length"] = json.loads((out / "config.json").read_text())["mm_tokens_per_image"]
    (out / "preprocessor_config.json").write_text(json.dumps(proc))
    # Else AutoTokenizer makes a GemmaTokenizer, which adds tokens of its own.
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def convert(src: Path, hf: Path, out: Path, mmproj: bool) -> Path:
    cmd = [sys.executable, "-c", CONVERT, str(src), str(hf), "--outtype", "f32"]
    cmd += ["--outfile", str(out)] + (["--mmproj"] if mmproj else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py failed: {r.stderr.strip()[-2000:]}")
    return out


def same_file(ours: Path, theirs: Path) -> list[str]:
    """How tiny_vision.write_mmproj's file differs from the converter's in
    its clip.* keys and its tensors (names, types, values)."""
    import gguf
    import numpy as np

    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))

    def keys(r: gguf.GGUFReader) -> dict[str, Any]:
        return {k: f.contents() for k, f in r.fields.items() if k.startswith("clip.")}

    out = [
        f"key {k}: {keys(a).get(k)!r} here, {keys(b).get(k)!r} there"
        for k in sorted(set(keys(a)) | set(keys(b)))
        if keys(a).get(k) != keys(b).get(k)
    ]
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    out += [f"tensor {n}: only in one" for n in sorted(set(ta) ^ set(tb))]
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type or not np.array_equal(x.data, y.data):
            out.append(f"tensor {n}: {x.tensor_type.name} here, {y.tensor_type.name} there")
    return out


def letterbox(img: Any, size: int) -> Any:
    """llama.cpp's Gemma 3 resize (img_tool::resize, PAD_CEIL) with Pillow:
    fit inside size x size keeping the aspect, centred on black."""
    import math

    from PIL import Image

    scale = min(size / img.width, size / img.height)
    w = min(math.ceil(img.width * scale), size)
    h = min(math.ceil(img.height * scale), size)
    out = Image.new("RGB", (size, size))
    out.paste(img.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return out


class Mtmd:
    """llama.cpp: the text GGUF in a llama context, the mmproj in mtmd."""

    def __init__(self, text: Path, mmproj: Path, threads: int):
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self.lc, self.mt = llama_cpp, mtmd_cpp
        # mtmd logs every image it encodes to stderr.
        self._quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
        mtmd_cpp.mtmd_log_set(self._quiet, None)
        mtmd_cpp.mtmd_helper_log_set(self._quiet, None)
        self.llm = llama_cpp.Llama(
            str(text), n_ctx=256, n_batch=256, n_threads=threads, verbose=False
        )
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = threads
        params.print_timings = False
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, params)
        if not self.ctx:
            sys.exit(f"mtmd cannot load {mmproj}")
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.llm.model)

    def run(self, img: Any, steps: int, image_id: int) -> dict[str, Any]:
        """The prompt with `img` at the marker: its ids (the image as its
        soft tokens), the image's embeddings, the logits after the prompt,
        and `steps` greedy ids."""
        import numpy as np
        import torch

        lc, mt = self.lc, self.mt
        rgb = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        bitmap = mt.mtmd_bitmap_init(img.width, img.height, data)
        text = (PROMPT[0] + mt.mtmd_default_marker().decode() + PROMPT[1]).encode()
        inp = mt.mtmd_input_text()
        inp.text, inp.text_len = text, len(text)
        inp.add_special, inp.parse_special = False, True
        chunks = mt.mtmd_input_chunks_init()
        try:
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), bitmaps, 1) != 0:
                sys.exit("mtmd_tokenize failed")
            ids: list[int] = []
            embeds = None
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    toks = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    ids += [toks[j] for j in range(n.value)]
                    continue
                n_img = mt.mtmd_input_chunk_get_n_tokens(chunk)
                if mt.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    sys.exit("mtmd_encode_chunk failed")
                out = mt.mtmd_get_output_embd(self.ctx)
                flat = np.ctypeslib.as_array(out, shape=(n_img * self.n_embd,))
                embeds = torch.tensor(flat.reshape(n_img, self.n_embd).copy())
                ids += [image_id] * n_img
            self.llm.reset()
            lc.llama_memory_clear(lc.llama_get_memory(self.llm.ctx), True)
            n_past = lc.llama_pos(0)
            if mt.mtmd_helper_eval_chunks(
                self.ctx, self.llm.ctx, chunks, 0, 0, 256, True, ctypes.byref(n_past)
            ):
                sys.exit("mtmd_helper_eval_chunks failed")
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)
        logits = self._logits()
        first, greedy = logits, []
        for _ in range(steps):
            greedy.append(int(logits.argmax()))
            tok = (lc.llama_token * 1)(greedy[-1])
            if lc.llama_decode(self.llm.ctx, lc.llama_batch_get_one(tok, 1)) != 0:
                sys.exit("llama_decode failed")
            logits = self._logits()
        return dict(ids=ids, embeds=embeds, logits=first, greedy=greedy)

    def _logits(self) -> Any:
        import numpy as np
        import torch

        row = self.lc.llama_get_logits_ith(self.llm.ctx, -1)
        return torch.tensor(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy())

    def close(self) -> None:
        self.mt.mtmd_free(self.ctx)
        self.llm.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--llama-cpp", help="llama-cpp-python's directory (default: peers/llama_cpp.py's)"
    )
    p.add_argument("--steps", type=int, default=32, help="greedy ids compared")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, help="write the checkpoint and GGUFs here")
    a = p.parse_args()
    from peers import llama_cpp as peer

    sys.path.insert(0, os.path.expanduser(a.llama_cpp or str(peer.python_package())))
    import torch

    from testing.tiny_vision import IMAGE_ID, write_gemma3_vision, write_mmproj
    from torchchat.generate import argmax, decode
    from torchchat.loading import LoadOptions, load
    from torchchat.vision import preprocess, read_image

    tmp = a.keep or Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    ckpt = write_gemma3_vision(tmp / "gemma3-vision")
    hub = hub_layout(ckpt, tmp / "gemma3-vision-hub")
    src = peer.source_tree()
    text = convert(src, hub, tmp / "tiny-gemma3.gguf", mmproj=False)
    mmproj = convert(src, hub, tmp / "mmproj-tiny-gemma3.gguf", mmproj=True)
    print(f"llama.cpp's convert_hf_to_gguf.py wrote {text.name} and {mmproj.name} in {tmp}")
    diffs = same_file(write_mmproj(ckpt, tmp / "mmproj-tiny-vision.gguf"), mmproj)
    print("testing/tiny_vision.write_mmproj against the converter's mmproj:", diffs or "the same")

    opts = LoadOptions(
        checkpoint=text,
        mmproj=mmproj,
        compile="none",
        dtype="float32",
        max_seq_length=256,
        quiet=True,
    )
    ours = load(opts)
    assert ours.vision is not None
    size = ours.vision.config.image_size
    photo = read_image(Path(importlib.util.find_spec("sklearn").origin).parent / CHINA)
    # The photo as torchchat resizes it, back to 8-bit RGB (what it
    # normalises is exactly this).
    square = photo.convert("RGB").resize((size, size), resample=ours.vision.config.resample)
    assert torch.equal(
        preprocess(square, ours.vision.config), preprocess(photo, ours.vision.config)
    )
    cases = [
        ("same pixels", square, square),
        ("own preprocessing", photo, photo),
        ("letterboxed", photo, letterbox(photo.convert("RGB"), size)),
    ]
    ref = Mtmd(text, mmproj, a.threads)
    bad = 0
    print(
        f"{'image':<18} {'prompt ids equal':>16} {'max |embed diff|':>17} "
        f"{'max |logit diff|':>17} {'greedy ids equal':>17}"
    )
    try:
        for name, theirs_img, ours_img in cases:
            got = ref.run(theirs_img, a.steps, IMAGE_ID)
            ids = got["ids"]
            # Our tokenizer on the text mtmd wraps the image in.
            tok_ids = ours.tokenizer.encode(PROMPT[0] + "<start_of_image>", bos=False)
            tok_ids += [IMAGE_ID] * ours.vision.config.mm_tokens
            tok_ids += ours.tokenizer.encode("<end_of_image>" + PROMPT[1], bos=False)
            spans = ours.vision.spans(ids, [ours_img])
            slot = ours.slot()
            slot.reuse(ids, spans)
            with torch.inference_mode():
                logits = slot.prefill(ids).reshape(-1)[: ref.n_vocab].float()
            greedy = list(decode(ours.slot(), ids, argmax, a.steps, images=spans))
            emb = (spans[0].embeds.float() - got["embeds"]).abs().max().item()
            diff = (logits - got["logits"]).abs().max().item()
            same = 0
            while same < a.steps and greedy[same] == got["greedy"][same]:
                same += 1
            print(
                f"{name:<18} {'yes' if tok_ids == ids else 'no':>16} {emb:>17.2e} {diff:>17.2e} "
                f"{f'{same}/{a.steps}':>17}"
            )
            # llama.cpp's tower rounds through fp16 in places (about 5e-4 of
            # the embeddings' size here), its text model as the text parity's.
            if name == "same pixels" and (emb > 1e-2 or diff > 1e-3 or greedy != got["greedy"]):
                bad += 1
    finally:
        ref.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
