"""Writes a tiny random Llama and its two exports, for the runner tests.

Usage: make_tiny_artifacts.py OUT_DIR
       make_tiny_artifacts.py --full-logits OUT_DIR   # for eval: both exports
                                                      # with every position's logits
       make_tiny_artifacts.py --slots OUT_DIR         # for the server: a .pt2
                                                      # with 4 cache rows
       make_tiny_artifacts.py --q4 OUT_DIR            # the exact 4-bit .pte of
                                                      # its GGUF (Q4_0/Q4_1, Q8_0)

OUT_DIR/ckpt/ is the Meta-format checkpoint (with its tokenizer), and
OUT_DIR/model.pte, OUT_DIR/model.pt2 come from //export:export_llm's own
command line, with the tokenizer files it writes beside them, and
OUT_DIR/mobile/model.pte is the same model under the `mobile` preset
(4-bit embedding, XNNPACK 8da4w linears).
"""

import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from export import export_llm
from testing import tiny_model

MAX_SEQ = 64


def export_both(out: Path, *flags: str) -> int:
    """The tiny checkpoint in OUT/ckpt, exported to OUT/model.pte and .pt2."""
    ckpt = tiny_model.write_checkpoint(out / "ckpt", max_seq_len=256)
    return export_llm.main(
        [
            "--checkpoint-path",
            str(ckpt),
            "--output-pte-path",
            str(out / "model.pte"),
            "--output-aoti-package-path",
            str(out / "model.pt2"),
            "--max-seq-length",
            str(MAX_SEQ),
            *flags,
            "--quiet",
        ]
    )


def main() -> NoReturn:
    if sys.argv[1] == "--full-logits":
        sys.exit(export_both(Path(sys.argv[2]), "--full-logits"))
    if sys.argv[1] == "--slots":
        out = Path(sys.argv[2])
        ckpt = tiny_model.write_checkpoint(out / "ckpt", max_seq_len=256)
        sys.exit(
            export_llm.main(
                ["--checkpoint-path", str(ckpt), "--output-aoti-package-path"]
                + [str(out / "model.pt2"), "--max-seq-length", str(MAX_SEQ), "--slots", "4"]
                + ["--quiet"]
            )
        )
    if sys.argv[1] == "--q4":
        out = Path(sys.argv[2])
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = tiny_model.write_checkpoint(Path(tmp) / "ckpt", max_seq_len=256)
            gguf = tiny_model.write_gguf(ckpt, Path(tmp) / "tiny.gguf")
            sys.exit(
                export_llm.main(
                    ["--gguf-path", str(gguf), "--tokenizer-path", str(ckpt / "tokenizer.json")]
                    + ["--quantize", "q4", "--output-pte-path", str(out / "model.pte")]
                    + ["--max-seq-length", str(MAX_SEQ), "--quiet"]
                )
            )
    out = Path(sys.argv[1])
    ckpt = out / "ckpt"
    rc = export_both(out)
    if rc == 0:
        (out / "mobile").mkdir(exist_ok=True)
        rc = export_llm.main(
            [
                "--checkpoint-path",
                str(ckpt),
                "--output-pte-path",
                str(out / "mobile" / "model.pte"),
                "--quantize",
                "mobile",
                "--max-seq-length",
                str(MAX_SEQ),
                "--quiet",
            ]
        )
    sys.exit(rc)


if __name__ == "__main__":
    main()
