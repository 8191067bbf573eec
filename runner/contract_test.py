"""The C++ runners and Python agree: the Stats JSON keys (--stats-json in
aoti_run, et_run and generate), the stop reasons, and the room a chat turn
keeps for its answer. The C++ side prints its own (//runner/common:contract)."""

import json
import os
import subprocess
import unittest
from pathlib import Path

from torchchat import generate

CONTRACT = Path(os.environ.get("TEST_SRCDIR", ".")) / "_main" / "runner" / "common" / "contract"


class ContractTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        out = subprocess.run([str(CONTRACT)], capture_output=True, text=True, check=True).stdout
        cls.cpp = json.loads(out)

    def test_stats_json_keys(self):
        self.assertEqual(list(self.cpp["stats"]), list(generate.Stats().to_json()))

    def test_stop_reasons(self):
        self.assertEqual(tuple(self.cpp["stop_reasons"]), generate.STOP_REASONS)

    def test_chat_answer_reserve(self):
        self.assertEqual(self.cpp["chat_answer_reserve"], generate.CHAT_ANSWER_RESERVE)


if __name__ == "__main__":
    unittest.main()
