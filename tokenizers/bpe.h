// Byte-pair merging shared by the tiktoken and HF BPE models, and the
// special-token scanner both use.
#ifndef TOKENIZERS_BPE_H_
#define TOKENIZERS_BPE_H_

#include <cstdint>
#include <cstring>
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
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : start > o.start; }
  };
  std::vector<Cand> storage;
  storage.reserve(n);
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>(),
                                                                        std::move(storage));
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

// Byte string -> int map for the vocabulary lookups that dominate BPE
// encoding. Open addressing over one key arena, with a hash made for short
// keys (most pieces are under 16 bytes): two 8-byte loads and a multiply,
// several times cheaper than a general string hash.
class BytesMap {
 public:
  void Reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    Rehash(cap);
  }
  // Inserts; returns false if the key was already there (value unchanged).
  bool Insert(std::string_view key, int value) {
    if ((size_ + 1) * 2 > slots_.size()) Rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const uint64_t h = Hash(key);
    size_t i = h & (slots_.size() - 1);
    while (slots_[i].len != kEmpty) {
      if (slots_[i].hash == h && Key(slots_[i]) == key) return false;
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = {h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), value};
    arena_.append(key);
    ++size_;
    return true;
  }
  // The value, or -1.
  int Find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = Hash(key);
    size_t i = h & (slots_.size() - 1);
    while (slots_[i].len != kEmpty) {
      const Slot& s = slots_[i];
      if (s.hash == h && s.len == key.size() &&
          std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
        return s.value;
      }
      i = (i + 1) & (slots_.size() - 1);
    }
    return -1;
  }
  size_t size() const { return size_; }
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.len != kEmpty) fn(Key(s), s.value);
    }
  }

  static uint64_t Hash(std::string_view k) {
    const size_t n = k.size();
    const char* p = k.data();
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (true) {
      uint64_t a = 0, b = 0;
      const size_t take = n - (p - k.data());
      if (take >= 16) {
        std::memcpy(&a, p, 8);
        std::memcpy(&b, p + 8, 8);
      } else if (take >= 8) {
        std::memcpy(&a, p, 8);
        std::memcpy(&b, p + take - 8, 8);
      } else if (take >= 4) {
        uint32_t x, y;
        std::memcpy(&x, p, 4);
        std::memcpy(&y, p + take - 4, 4);
        a = x;
        b = y;
      } else if (take > 0) {
        a = (static_cast<uint64_t>(static_cast<unsigned char>(p[0])) << 16) |
            (static_cast<uint64_t>(static_cast<unsigned char>(p[take >> 1])) << 8) |
            static_cast<unsigned char>(p[take - 1]);
      }
      h = Mix(a ^ h, b ^ 0xC2B2AE3D27D4EB4Full);
      if (take <= 16) break;
      p += 16;
    }
    return h;
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0;
    uint32_t len = kEmpty;
    int value = 0;
  };
  static uint64_t Mix(uint64_t a, uint64_t b) {
    const __uint128_t r = static_cast<__uint128_t>(a) * b;
    return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
  }
  std::string_view Key(const Slot& s) const {
    return std::string_view(arena_.data() + s.offset, s.len);
  }
  void Rehash(size_t cap) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot());
    for (const Slot& s : old) {
      if (s.len == kEmpty) continue;
      size_t i = s.hash & (cap - 1);
      while (slots_[i].len != kEmpty) i = (i + 1) & (cap - 1);
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0;
};

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
  bool Find(std::string_view text, size_t from, Accept&& accept, size_t* start, size_t* len,
            int* id) const {
    for (size_t i = from; i < text.size(); ++i) {
      const auto b = static_cast<unsigned char>(text[i]);
      if (!first_[b]) continue;
      for (int k : by_first_[b]) {
        const std::string& t = tokens_[k].first;
        if (text.compare(i, t.size(), t) == 0 && accept(t, tokens_[k].second, i)) {
          *start = i;
          *len = t.size();
          *id = tokens_[k].second;
          return true;
        }
      }
    }
    return false;
  }
  const std::vector<std::pair<std::string, int>>& tokens() const { return tokens_; }

 private:
  std::vector<std::pair<std::string, int>> tokens_;
  bool first_[256] = {};
  std::vector<int> by_first_[256];  // longest first
};

}  // namespace tokenizers

#endif  // TOKENIZERS_BPE_H_
