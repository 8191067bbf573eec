"""Our GGUF reading against llama.cpp itself, per architecture.

    tools/bazel run //testing:llama_cpp_parity -- --llama-cpp ~/.cache/torchchat/llama-cpp-0.3.36

Writes each tiny architecture of testing.tiny_archs as a GGUF the way
llama.cpp's converter lays it out (F32 and Q8_0, no vocabulary), runs it in
llama-cpp-python (built as runner/README.md says) and in torchchat's GGUF
loader on the same 24 token ids, and prints the largest logit difference
and whether every position's arg-max agrees. Exits 1 if an F32 file
differs by more than 1e-3 or in any arg-max. Q8_0 is reported only:
llama.cpp quantizes activations to 8 bits for Q8_0 matmuls, we do not.

Not a test target: llama-cpp-python takes about 7 minutes to build.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", required=True, help="directory llama-cpp-python is installed in")
    p.add_argument("arch", nargs="*", help="only these testing/tiny_archs entries (default: all)")
    a = p.parse_args()
    sys.path.insert(0, os.path.expanduser(a.llama_cpp))
    import gguf
    import llama_cpp
    import numpy as np
    import torch

    from testing.tiny_archs import CONFIGS, VOCAB, hf_model, model_type, write_gguf
    from torchchat.checkpoint import load_checkpoint, load_model
    from torchchat.model import attend_filled_cache

    prompt = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    tmp = Path(tempfile.mkdtemp())
    bad = 0
    print(f"{'architecture':<12} {'type':<5} {'max |logit diff|':>17} {'arg-max equal':>14}")
    for arch in a.arch or CONFIGS:
        for qtype in ("F32", "Q8_0"):
            path = tmp / f"{arch}-{qtype}.gguf"
            # llama.cpp loads a model without a vocabulary given its size.
            orig = gguf.GGUFWriter.write_header_to_file

            def with_vocab(
                self: "gguf.GGUFWriter", *args: object, _orig: object = orig, **kw: object
            ) -> None:
                self.add_tokenizer_model("no_vocab")
                self.add_vocab_size(VOCAB)
                return _orig(self, *args, **kw)

            gguf.GGUFWriter.write_header_to_file = with_vocab
            try:
                write_gguf(hf_model(arch), model_type(arch), path, qtype)
            finally:
                gguf.GGUFWriter.write_header_to_file = orig
            model = load_model(load_checkpoint(path), torch.float32, 128, full_logits=True)
            with torch.inference_mode():
                ours = attend_filled_cache(model)(
                    torch.tensor([prompt]), torch.arange(len(prompt))
                )[0]
            llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
            llm.eval(prompt)
            ref = torch.tensor(np.array(llm.scores[: len(prompt)]))
            llm.close()
            diff = (ours - ref).abs().max().item()
            equal = int((ours.argmax(-1) == ref.argmax(-1)).sum())
            same = equal == len(prompt)
            print(f"{arch:<12} {qtype:<5} {diff:>17.2e} {f'{equal}/{len(prompt)}':>14}")
            if qtype == "F32" and (diff > 1e-3 or not same):
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
