"""Bad input: one clear line on stderr, exit 1, nothing at the output path.

Every case fails before the export itself, so this file stays fast.
"""

import contextlib
import io
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from export import export_llm, quant
from testing import tiny_model


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        cls.ckpt = tiny_model.write_checkpoint(cls.dir / "ckpt", max_seq_len=128)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_cli(self, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = export_llm.main(["--checkpoint-path", str(self.ckpt), *args])
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("export_llm:")]
        return rc, lines, err.getvalue()

    def assert_error(self, pattern, *args):
        out = self.dir / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        args = [a.replace("OUT", str(out)) for a in args]
        rc, lines, text = self.run_cli(*args)
        self.assertEqual(rc, 1, text)
        self.assertEqual(len(lines), 1, text)
        self.assertRegex(lines[0], pattern)
        self.assertNotIn("Traceback", text)
        self.assertEqual(os.listdir(out), [], "a failed export left files behind")

    def test_unknown_quantize_scheme(self):
        self.assert_error(
            r"unknown scheme 'linear:int3'",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            '{"linear:int3": {"groupsize": 32}}',
        )

    def test_unknown_quantize_option(self):
        self.assert_error(
            r"unknown option\(s\) \['group'\] for 'embedding'",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            '{"embedding": {"bitwidth": 4, "group": 32}}',
        )

    def test_weight_only_int8_pte_refused_up_front(self):
        self.assert_error(
            r"linear:int8 \(weight-only\) fails in ExecuTorch",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            '{"linear:int8": {}}',
        )

    def test_invalid_quantize_json(self):
        self.assert_error(r"invalid JSON", "--output-pte-path", "OUT/m.pte", "--quantize", "{oops")

    def test_unknown_preset(self):
        self.assert_error(
            r"not JSON, a preset \(mobile, desktop, q4, gguf\)",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            "laptop",
        )

    def test_scheme_the_target_cannot_run(self):
        # linear:int4 in a .pte is torchchat's exact kernel: fp32 and groups
        # of 32 only, refused before any work otherwise.
        self.assert_error(
            r"linear:int4 in a \.pte computes in fp32; drop the bf16",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            "desktop",
        )
        self.assert_error(
            r"linear:int4 in a \.pte computes in fp32; drop --dtype bf16",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            "q4",
            "--dtype",
            "bf16",
        )
        self.assert_error(
            r"linear:int4 in a \.pte .* groupsize 64 is not supported",
            "--output-pte-path",
            "OUT/m.pte",
            "--quantize",
            '{"linear:int4": {"groupsize": 64}}',
        )
        self.assert_error(
            r"linear:a8w4dq is an ExecuTorch",
            "--output-aoti-package-path",
            "OUT/m.pt2",
            "--quantize",
            "mobile",
        )

    def test_unwritable_output_path(self):
        self.assert_error(
            r"directory .*/missing does not exist", "--output-pte-path", "OUT/missing/m.pte"
        )
        adir = self.dir / "adir.pt2"
        adir.mkdir(exist_ok=True)
        self.assert_error(r"is a directory", "--output-aoti-package-path", str(adir))

    def test_unwritable_output_is_caught_before_loading(self):
        rc, lines, text = self.run_cli("--output-pte-path", str(self.dir / "missing" / "m.pte"))
        self.assertEqual(rc, 1)
        self.assertNotIn("[load]", text)

    def test_max_seq_length_larger_than_the_model(self):
        self.assert_error(
            r"--max-seq-length 1000 is larger than the model supports \(128",
            "--output-pte-path",
            "OUT/m.pte",
            "--max-seq-length",
            "1000",
        )

    def test_wrong_suffix_and_missing_output(self):
        self.assert_error(r"must end in \.pte", "--output-pte-path", "OUT/m.bin")
        self.assert_error(r"give --output-pte-path and/or --output-aoti-package-path")

    def test_slots_only_for_a_pt2_of_last_logits(self):
        slots = r"--slots takes 2 or more, and only with --output-aoti-package-path"
        self.assert_error(slots, "--output-pte-path", "OUT/m.pte", "--slots", "4")
        self.assert_error(slots, "--output-aoti-package-path", "OUT/m.pt2", "--slots", "1")
        self.assert_error(
            r"drop --full-logits",
            "--output-aoti-package-path",
            "OUT/m.pt2",
            "--slots",
            "4",
            "--full-logits",
        )

    def test_a_model_and_a_path_flag(self):
        # The CLI's rule (torchchat.loading): one way to name the model.
        self.assert_error(
            r"give either a model \(tiny\) or a path flag, not both",
            "tiny",
            "--output-pte-path",
            "OUT/m.pte",
        )

    def test_an_artifact_is_not_a_checkpoint(self):
        pt2 = self.dir / "model.pt2"
        pt2.touch()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = export_llm.main([str(pt2), "--output-pte-path", str(self.dir / "m.pte")])
        self.assertEqual(rc, 1)
        self.assertRegex(err.getvalue(), r"model\.pt2 is an exported artifact, not a checkpoint")

    def test_missing_checkpoint(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = export_llm.main(
                [
                    "--checkpoint-path",
                    str(self.dir / "nope"),
                    "--output-pte-path",
                    str(self.dir / "m.pte"),
                ]
            )
        self.assertEqual(rc, 1)
        self.assertIn("checkpoint not found", err.getvalue())


class QuantSpecTest(unittest.TestCase):
    def test_presets_map_onto_executorch_and_aoti(self):
        et = quant.for_executorch(quant.parse("mobile"))
        self.assertEqual(
            (et.embedding_quantize, et.quantization_mode, et.group_size), ("4,32", "8da4w", 32)
        )
        q4 = quant.for_executorch(quant.parse("q4"))
        self.assertEqual(
            (q4.embedding_quantize, q4.quantization_mode, q4.q4_kernels), ("8,32", None, True)
        )
        desktop = quant.parse("desktop")
        self.assertEqual(quant.for_aoti(desktop), {"linear:int4": {"groupsize": 32}})
        self.assertEqual(quant.dtype_of(desktop, "fp32"), "bf16")

    def test_upstream_json_and_file(self):
        spec = {"embedding": {"bitwidth": 8, "groupsize": 0}, "linear:a8w8dq": {"groupsize": 0}}
        et = quant.for_executorch(quant.parse(spec))
        self.assertEqual((et.embedding_quantize, et.quantization_mode), ("8,0", "8da8w"))
        path = Path(tempfile.mkdtemp()) / "q.json"
        path.write_text('{"linear:int8": {"groupsize": 0}, "precision": {"dtype": "bfloat16"}}')
        spec = quant.parse(str(path))
        self.assertEqual(quant.for_aoti(spec), {"linear:int8": {"groupsize": 0}})
        self.assertEqual(quant.dtype_of(spec, "fp32"), "bf16")

    def test_two_linear_schemes_conflict(self):
        with self.assertRaisesRegex(quant.QuantizeError, "choose one linear scheme"):
            quant.parse({"linear:int8": {}, "linear:a8w4dq": {"groupsize": 32}})

    def test_bad_groupsize(self):
        with self.assertRaisesRegex(quant.QuantizeError, "non-negative integer"):
            quant.parse({"linear:a8w4dq": {"groupsize": "32"}})


if __name__ == "__main__":
    unittest.main()
