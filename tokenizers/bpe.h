// Byte-pair merging shared by the tiktoken and HF BPE models, and the
// special-token scanner both use.
#ifndef TOKENIZERS_BPE_H_
#define TOKENIZERS_BPE_H_

#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenizers {

struct Symbol {
  uint32_t start;  // byte range in the piece
  uint32_t end;
  int id;
  int prev;  // neighbours in the live list, -1 at the ends
  int next;
};

// Repeatedly merges the adjacent pair of lowest rank (leftmost first among
// equal ranks) until no pair has a rank. `pair(a, b, &new_id)` returns the
// rank of merging symbols a and b, or -1 when they do not merge.
//
// A heap of candidate pairs makes this O(n log n) in the piece length
// (tiktoken's own loop rescans the piece after every merge, which is
// quadratic on a long piece). Entries go stale when a neighbour merges; they
// are recognised and skipped when popped.
template <typename PairFn>
void MergeSymbols(std::vector<Symbol>* syms, PairFn&& pair) {
  auto& s = *syms;
  const int n = static_cast<int>(s.size());
  if (n < 2) return;
  struct Cand {
    int rank;
    uint32_t start;  // left symbol's start: the tie-breaker
    int left;
    int right;
    uint32_t right_end;  // detects that the right symbol has grown
    int new_id;
    bool operator>(const Cand& o) const {
      return rank != o.rank ? rank > o.rank : start > o.start;
    }
  };
  std::vector<Cand> storage;
  storage.reserve(n);
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(
      std::greater<Cand>(), std::move(storage));
  auto push = [&](int l, int r) {
    int new_id = -1;
    const int rank = pair(s[l], s[r], &new_id);
    if (rank >= 0) heap.push({rank, s[l].start, l, r, s[r].end, new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Symbol& l = s[c.left];
    if (l.id == -2 || l.next != c.right) continue;
    Symbol& r = s[c.right];
    if (r.id == -2 || r.end != c.right_end) continue;
    l.end = r.end;
    l.id = c.new_id;
    l.next = r.next;
    if (r.next >= 0) s[r.next].prev = c.left;
    r.id = -2;  // dead
    if (l.prev >= 0) push(l.prev, c.left);
    if (l.next >= 0) push(c.left, l.next);
  }
}

// Live symbols of `syms` after MergeSymbols, in order.
template <typename Fn>
void ForEachLive(const std::vector<Symbol>& syms, Fn&& fn) {
  for (int i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) fn(syms[i]);
}

// Finds special tokens in text: leftmost occurrence, longest at that
// position. Scanning is linear in the text for the usual token sets (a
// first-byte filter, then a handful of candidates to compare).
class SpecialMatcher {
 public:
  void Add(std::string token, int id);
  bool empty() const { return tokens_.empty(); }
  // Finds the first match at or after `from` whose token satisfies
  // `accept(token, id, start)`. Returns false if none.
  template <typename Accept>
  bool Find(std::string_view text, size_t from, Accept&& accept, size_t* start,
            size_t* len, int* id) const {
    for (size_t i = from; i < text.size(); ++i) {
      const auto b = static_cast<unsigned char>(text[i]);
      if (!first_[b]) continue;
      for (int k : by_first_[b]) {
        const std::string& t = tokens_[k].first;
        if (text.compare(i, t.size(), t) == 0 &&
            accept(t, tokens_[k].second, i)) {
          *start = i;
          *len = t.size();
          *id = tokens_[k].second;
          return true;
        }
      }
    }
    return false;
  }
  const std::vector<std::pair<std::string, int>>& tokens() const {
    return tokens_;
  }

 private:
  std::vector<std::pair<std::string, int>> tokens_;
  bool first_[256] = {};
  std::vector<int> by_first_[256];  // longest first
};

}  // namespace tokenizers

#endif  // TOKENIZERS_BPE_H_
