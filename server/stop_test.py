"""Stop strings across token boundaries; the stop text is never sent."""

import unittest

from server.stop import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.push(p) for p in pieces)
    return out + m.flush(), m.stopped


class StopTest(unittest.TestCase):
    def test_stop_split_over_pieces_is_cut_and_never_sent(self):
        m = StopMatcher(["END"])
        self.assertEqual(m.push("abc E"), "abc ")  # "E" may start END: held
        self.assertEqual(m.push("N"), "")
        self.assertEqual(m.push("Dxyz"), "")
        self.assertTrue(m.stopped)
        self.assertEqual(m.flush(), "")

    def test_held_text_is_released_when_it_is_no_stop(self):
        self.assertEqual(run(["END"], ["abc E", "Nx", "yz"]), ("abc ENxyz", False))
        self.assertEqual(run(["END"], ["abc EN"]), ("abc EN", False))  # flushed at the end

    def test_earliest_of_several_stops_wins(self):
        self.assertEqual(run(["b", "cd"], ["a", "c", "d", "b"]), ("a", True))
        self.assertEqual(run(["\n\n", "."], ["one\n", "\ntwo."]), ("one", True))

    def test_overlapping_prefixes(self):
        # "aab" inside "aaab": the first "a" is safe, the rest matches.
        self.assertEqual(run(["aab"], ["a", "a", "a", "b", "c"]), ("a", True))

    def test_no_stops_passes_everything(self):
        self.assertEqual(run([], ["x", "y"]), ("xy", False))
        self.assertEqual(run([""], ["x"]), ("x", False))


if __name__ == "__main__":
    unittest.main()
