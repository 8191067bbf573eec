"""torchchat::row_sdpa: the attention torch computes (grouped-query heads,
a windowed causal mask, a score cap, slots), and each row's bits the same
in a call of 1 row and of up to 16, on 1 or 2 threads; longer runs of one
slot are torch's own SDPA over that slot's filled cache."""

import unittest

import torch

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
