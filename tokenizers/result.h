// Result<T>: a value or an error message, returned by every fallible call in
// this library. No exception escapes the API and nothing aborts on bad input.
#ifndef TOKENIZERS_RESULT_H_
#define TOKENIZERS_RESULT_H_

#include <string>
#include <utility>
#include <variant>

namespace tokenizers {

struct Error {
  std::string message;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  const T& value() const& { return std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  // The error message; empty when ok().
  const std::string& error() const {
    static const std::string kEmpty;
    return ok() ? kEmpty : std::get<1>(v_).message;
  }

 private:
  std::variant<T, Error> v_;
};

// Result<void>.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error.message)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
  bool ok_ = true;
};

inline Error MakeError(std::string message) { return Error{std::move(message)}; }

}  // namespace tokenizers

#endif  // TOKENIZERS_RESULT_H_
