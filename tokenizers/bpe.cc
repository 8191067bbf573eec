#include "tokenizers/bpe.h"

#include <algorithm>

namespace tokenizers {

void SpecialMatcher::Add(std::string token, int id) {
  if (token.empty()) return;
  const auto b = static_cast<unsigned char>(token[0]);
  tokens_.emplace_back(std::move(token), id);
  auto& v = by_first_[b];
  v.push_back(static_cast<int>(tokens_.size()) - 1);
  std::stable_sort(v.begin(), v.end(),
                   [&](int x, int y) { return tokens_[x].first.size() > tokens_[y].first.size(); });
  first_[b] = true;
}

}  // namespace tokenizers
