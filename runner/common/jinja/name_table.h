// Name-to-function tables for filters, tests and methods. Each is a sorted
// constexpr array: one list serves both dispatch and "is this name known",
// a static_assert on the order catches a duplicate or misplaced entry at
// compile time, and lookups need neither hashing nor static initialisation.
#ifndef RUNNER_COMMON_JINJA_NAME_TABLE_H_
#define RUNNER_COMMON_JINJA_NAME_TABLE_H_

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string_view>

namespace torchchat::jinja {

template <typename Fn>
struct NamedFn {
  std::string_view name;
  Fn fn;
};

template <typename Fn, size_t N>
constexpr bool StrictlySorted(const NamedFn<Fn> (&table)[N]) {
  for (size_t k = 1; k < N; ++k) {
    if (!(table[k - 1].name < table[k].name)) return false;
  }
  return true;
}

// The function named `name`, or null.
template <typename Fn, size_t N>
Fn FindFn(const NamedFn<Fn> (&table)[N], std::string_view name) {
  const auto* it =
      std::lower_bound(std::begin(table), std::end(table), name,
                       [](const NamedFn<Fn>& entry, std::string_view n) { return entry.name < n; });
  return it != std::end(table) && it->name == name ? it->fn : nullptr;
}

}  // namespace torchchat::jinja

#endif  // RUNNER_COMMON_JINJA_NAME_TABLE_H_
