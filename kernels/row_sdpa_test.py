"""torchchat::row_sdpa: the attention torch computes (grouped-query heads,
a windowed causal mask, a score cap, slots), and each row's bits the same
in a call of 1 row and of up to 16, on 1 or 2 threads, on every kernel path
(AVX-512, AVX2, scalar: forced through kernels.q4.using_isa); longer runs of
one slot are torch's own SDPA over that slot's filled cache."""

import unittest

import torch

from kernels import q4
from kernels.row_sdpa import MAX_ROWS, fits, row_sdpa

H, KV, L, D = 6, 2, 64, 40  # D not a multiple of 16: the lanes' tail


def causal(pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    j = torch.arange(L)
    allowed = j[None, :] <= pos[:, None]
    if window is not None:
        allowed &= (pos[:, None] - j[None, :]) < window
    return allowed


def reference(q, k, v, mask, slots, scale, softcap):
    """float64 attention, row by row."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    for t in range(q.shape[2]):
        for h in range(H):
            kk = k[slots[t], h // (H // KV)].double()
            vv = v[slots[t], h // (H // KV)].double()
            s = kk @ q[0, h, t].double() * scale
            if softcap:
                s = torch.tanh(s / softcap) * softcap
            s = s.masked_fill(~mask[t], float("-inf"))
            out[0, h, t] = torch.softmax(s, -1) @ vv
    return out


def paths() -> list[str]:
    """The kernel paths this CPU runs (kernels/isa.h), the default first."""
    runs = [""]
    for name in ("avx512", "avx2", "scalar"):
        try:
            with q4.using_isa(name):
                runs.append(name)
        except q4.Q4Error:
            pass
    return runs


class RowSdpaTest(unittest.TestCase):
    def setUp(self):
        g = torch.Generator().manual_seed(0)
        self.k = torch.randn(3, KV, L, D, generator=g)
        self.v = torch.randn(3, KV, L, D, generator=g)
        self.q = torch.randn(1, H, 20, D, generator=g) * 2

    def test_matches_attention(self):
        pos = torch.tensor([5, 6, 7, 30, 31, 40, 12, 13])
        slots = torch.tensor([0, 0, 0, 2, 2, 1, 1, 1])
        q = self.q[:, :, : len(pos)]
        for window, softcap, scale in ((None, None, None), (8, None, 0.3), (None, 5.0, None)):
            with self.subTest(window=window, softcap=softcap):
                mask = causal(pos, window)
                got = row_sdpa(q, self.k, self.v, mask, slots, scale, softcap)
                s = scale if scale is not None else D**-0.5
                want = reference(q, self.k, self.v, mask, slots, s, softcap)
                torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=2e-6)

    def test_rows_do_not_depend_on_the_call(self):
        pos = torch.arange(30, 30 + MAX_ROWS)
        mask = causal(pos, 24)
        one = [
            row_sdpa(self.q[:, :, t : t + 1], self.k, self.v, mask[t : t + 1], None, None, 4.0)
            for t in range(MAX_ROWS)
        ]
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for n in (2, 5, 8, MAX_ROWS):
                    with self.subTest(threads=threads, rows=n):
                        q = self.q[:, :, :n]
                        got = row_sdpa(q, self.k, self.v, mask[:n], None, None, 4.0)
                        self.assertTrue(torch.equal(got, torch.cat(one[:n], dim=2)))
        finally:
            torch.set_num_threads(before)

    def test_sixteen_rows_are_their_one_row_calls(self):
        """A check's 16 rows (each row's keys differ: causal, windowed, a
        hole as an image's mask leaves) in one call, against each row in a
        call of its own, bit for bit, over head layouts (MHA, GQA, one kv
        head), head sizes (lane tails) and score caps, on every path this
        CPU runs."""
        g = torch.Generator().manual_seed(1)
        pos = torch.arange(40, 40 + MAX_ROWS)
        for heads, kv, dim in ((6, 6, 64), (6, 2, 40), (8, 1, 72), (9, 3, 64)):
            k = torch.randn(2, kv, L, dim, generator=g)
            v = torch.randn(2, kv, L, dim, generator=g)
            q = torch.randn(1, heads, MAX_ROWS, dim, generator=g) * 2
            for window, softcap in ((None, None), (7, None), (24, 5.0), ("hole", None)):
                if window == "hole":
                    mask = causal(pos)
                    mask[::3, 10:30] = False
                else:
                    mask = causal(pos, window)
                slots = torch.ones(MAX_ROWS, dtype=torch.long)
                for path in paths():
                    case = dict(heads=heads, kv=kv, dim=dim, window=window, path=path)
                    with self.subTest(**case), q4.using_isa(path):
                        got = row_sdpa(q, k, v, mask, slots, None, softcap)
                        for t in range(MAX_ROWS):
                            one = row_sdpa(
                                q[:, :, t : t + 1],
                                k,
                                v,
                                mask[t : t + 1],
                                slots[t : t + 1],
                                None,
                                softcap,
                            )
                            self.assertTrue(torch.equal(got[:, :, t : t + 1], one), f"row {t}")

    def test_paths_give_the_same_bits(self):
        """AVX-512, AVX2 and scalar do the same operations in the same
        order (row_sdpa.cc): a model's attention does not depend on the
        CPU's vector width."""
        pos = torch.tensor([5, 6, 7, 30, 31, 40, 12, 13, 63])
        slots = torch.tensor([0, 0, 0, 2, 2, 1, 1, 1, 0])
        q = self.q[:, :, : len(pos)]
        for window, softcap in ((None, None), (8, 4.0)):
            mask = causal(pos, window)
            with q4.using_isa("scalar"):
                want = row_sdpa(q, self.k, self.v, mask, slots, None, softcap)
            for path in paths():
                with self.subTest(path=path, window=window), q4.using_isa(path):
                    got = row_sdpa(q, self.k, self.v, mask, slots, None, softcap)
                    self.assertTrue(torch.equal(got, want))

    def test_long_runs_are_torch_sdpa(self):
        """A prefill chunk (more than MAX_ROWS of one slot) beside a decode
        row of another slot: the chunk is torch's SDPA over its slot's
        filled cache, the decode row is still its one-row self."""
        n = MAX_ROWS + 3
        pos = torch.tensor([*range(10, 10 + n), 50])
        slots = torch.tensor([1] * n + [2])
        q = self.q[:, :, : n + 1]
        mask = causal(pos)
        got = row_sdpa(q, self.k, self.v, mask, slots)
        end = 10 + n
        want = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, :n],
            self.k[1:2, :, :end],
            self.v[1:2, :, :end],
            attn_mask=mask[:n, :end],
            enable_gqa=True,
        )
        self.assertTrue(torch.equal(got[:, :, :n], want))
        alone = row_sdpa(q[:, :, n:], self.k, self.v, mask[n:], slots[n:])
        self.assertTrue(torch.equal(got[:, :, n:], alone))

    def test_fits_and_errors(self):
        mask = causal(torch.tensor([3]))
        self.assertTrue(fits(self.q, self.k, mask))
        self.assertFalse(fits(self.q.bfloat16(), self.k, mask))
        self.assertFalse(fits(self.q, self.k, None))
        with self.assertRaisesRegex(RuntimeError, r"row_sdpa: slot 3 out of range \[0, 3\)"):
            row_sdpa(self.q[:, :, :1], self.k, self.v, mask, torch.tensor([3]))
        with self.assertRaisesRegex(RuntimeError, "row_sdpa: mask must be bool"):
            row_sdpa(self.q[:, :, :1], self.k, self.v, mask.float())


if __name__ == "__main__":
    unittest.main()
