"""The sampler's random stream and sampling rule, checked against a pure
Python transcription of the specification in sampler.h. Equality here is
what lets eager, AOTI and ExecuTorch runs draw the same tokens from the same
seed."""

import math
import unittest

import numpy as np

import llm_tokenizers as L

M64 = (1 << 64) - 1


class PyRng:
    def __init__(self, seed):
        z = (seed + 0x9E3779B97F4A7C15) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        self.s = z ^ (z >> 31)
        if self.s == 0:
            self.s = 0x9E3779B97F4A7C15

    def next_u64(self):
        s = self.s
        s ^= s >> 12
        s ^= (s << 25) & M64
        s ^= s >> 27
        self.s = s
        return (s * 0x2545F4914F6CDD1D) & M64

    def next_float(self):
        return (self.next_u64() >> 40) * 2.0**-24


def py_sample(
    logits, rng, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, recent=()
):
    x = np.array(logits, dtype=np.float32)
    if repetition_penalty != 1.0:
        for i in sorted(set(list(recent)[-L.REPETITION_WINDOW :])):
            if 0 <= i < len(x):
                x[i] = (
                    x[i] / np.float32(repetition_penalty)
                    if x[i] > 0
                    else x[i] * np.float32(repetition_penalty)
                )
    if temperature <= 0:
        return int(np.argmax(x))
    x = x / np.float32(temperature)
    order = sorted(range(len(x)), key=lambda i: (-float(x[i]), i))
    if 0 < top_k < len(x):
        order = order[:top_k]
    top = float(x[order[0]])
    p = [math.exp(float(x[i]) - top) for i in order]
    s = sum(p)
    p = [v / s for v in p]
    keep = len(order)
    if top_p < 1.0:
        cum, k = 0.0, 0
        while k < keep:
            cum += p[k]
            k += 1
            if cum >= np.float32(top_p):
                break
        keep = k
    if min_p > 0.0:
        th = float(np.float32(min_p)) * p[0]
        k = 1
        while k < keep and p[k] >= th:
            k += 1
        keep = k
    total = sum(p[:keep])
    u = rng.next_float() * total
    cum = 0.0
    for i in range(keep):
        cum += p[i]
        if cum > u:
            return order[i]
    return order[keep - 1]


class RngTest(unittest.TestCase):
    def test_stream_matches_specification(self):
        for seed in (0, 1, 42, 2**63 + 5, M64):
            a, b = L.Rng(seed), PyRng(seed)
            for _ in range(1000):
                self.assertEqual(a.next_u64(), b.next_u64())
            for _ in range(1000):
                self.assertEqual(a.next_float(), b.next_float())

    def test_known_values(self):
        # Pinned so that a change to the stream cannot go unnoticed.
        r = PyRng(42)
        first = [r.next_u64() for _ in range(3)]
        c = L.Rng(42)
        self.assertEqual([c.next_u64() for _ in range(3)], first)
        self.assertTrue(all(0 <= L.Rng(s).next_float() < 1 for s in range(100)))


class SamplerTest(unittest.TestCase):
    CONFIGS = [
        dict(temperature=0.0),
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=40),
        dict(temperature=0.9, top_p=0.9),
        dict(temperature=1.2, min_p=0.05),
        dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.3),
        dict(temperature=1.0, repetition_penalty=0.8),
    ]

    def test_same_tokens_as_the_specification(self):
        gen = np.random.default_rng(0)
        for cfg in self.CONFIGS:
            for seed in (0, 7):
                s = L.Sampler(seed=seed, **cfg)
                ref = PyRng(seed)
                recent = []
                for step in range(40):
                    logits = (gen.standard_normal(512) * 3).astype(np.float32)
                    got = s.sample(logits, recent)
                    want = py_sample(logits, ref, recent=recent, **cfg)
                    self.assertEqual(got, want, (cfg, seed, step))
                    recent.append(got)  # longer than the window by the end

    def test_penalty_looks_at_the_last_window_only(self):
        self.assertEqual(L.REPETITION_WINDOW, 64)
        logits = np.zeros(8, dtype=np.float32)
        logits[3] = 2.0
        logits[5] = 1.9
        s = L.Sampler(temperature=0, repetition_penalty=2.0)
        # Id 3 just outside the window is not penalized; inside it is.
        self.assertEqual(s.sample(logits, [3] + [0] * 64), 3)
        self.assertEqual(s.sample(logits, [3] + [0] * 63), 5)

    def test_deterministic_per_seed(self):
        logits = np.linspace(-2, 2, 1000).astype(np.float32)
        a = [L.Sampler(temperature=1.0, seed=3).sample(logits) for _ in range(3)]
        self.assertEqual(len(set(a)), 1)
        s1, s2 = L.Sampler(seed=9), L.Sampler(seed=9)
        self.assertEqual(
            [s1.sample(logits) for _ in range(50)], [s2.sample(logits) for _ in range(50)]
        )
        s3 = L.Sampler(seed=10)
        self.assertNotEqual(
            [s1.sample(logits) for _ in range(50)], [s3.sample(logits) for _ in range(50)]
        )

    def test_greedy_and_top_k_one(self):
        logits = np.array([0.1, 3.0, 3.0, -1.0], dtype=np.float32)
        self.assertEqual(L.Sampler(temperature=0).sample(logits), 1)
        self.assertEqual(L.Sampler(temperature=5, top_k=1, seed=1).sample(logits), 1)
        # The penalty pushes the repeated arg-max below its twin.
        self.assertEqual(L.Sampler(temperature=0, repetition_penalty=2.0).sample(logits, [1]), 2)

    def test_distribution(self):
        logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
        s = L.Sampler(temperature=1.0, seed=123)
        counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=3) / 20000
        np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.02)
        s = L.Sampler(temperature=1.0, top_p=0.6, seed=5)
        self.assertEqual(set(s.sample(logits) for _ in range(500)), {0, 1})
        s = L.Sampler(temperature=1.0, min_p=0.5, seed=5)
        self.assertEqual(set(s.sample(logits) for _ in range(500)), {0, 1})

    def test_inputs(self):
        s = L.Sampler(temperature=0)
        self.assertEqual(s.sample([1.0, 5.0, 2.0]), 1)  # lists and float64 convert
        self.assertEqual(s.sample(np.array([1.0, 5.0], dtype=np.float64)), 1)
        with self.assertRaises(L.TokenizerError):
            s.sample(np.zeros((2, 2), dtype=np.float32))
        with self.assertRaises(L.TokenizerError):
            s.sample(np.array([], dtype=np.float32))
        with self.assertRaises(L.TokenizerError):
            L.Sampler(top_p=0.0)
        with self.assertRaises(L.TokenizerError):
            L.Sampler(top_k=-1)
        with self.assertRaises(ValueError):  # TokenizerError is a ValueError
            L.Sampler(repetition_penalty=0)
        with self.assertRaises(L.TokenizerError):
            L.Sampler(temperature=1).sample(np.array([np.nan, 1], dtype=np.float32))
        # Greedy (its own one-pass path): the first largest, and NaN anywhere refused.
        self.assertEqual(L.Sampler(temperature=0).sample(np.array([1, 7, 3, 7], np.float32)), 1)
        for bad in ([np.nan, 1], [1, np.nan], [2, 1, np.nan]):
            with self.assertRaises(L.TokenizerError):
                L.Sampler(temperature=0).sample(np.array(bad, dtype=np.float32))


if __name__ == "__main__":
    unittest.main()
