// Error types that reach the user. Each carries a complete message: what was
// wrong, where (file, key or tensor) and what to do about it. The CLI prints
// the message and exits with a non-zero status; it never shows a stack trace.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace imp {

// A configuration file or a --set override is invalid.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A data file is missing, truncated or malformed.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}
}  // namespace detail

// Joins the arguments with operator<< into one string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  detail::append_all(out, args...);
  return out.str();
}

}  // namespace imp

// Throws ErrorType with the message pieces joined when `cond` is false.
#define IMP_REQUIRE(ErrorType, cond, ...)                  \
  do {                                                      \
    if (!(cond)) throw ErrorType(::imp::str_cat(__VA_ARGS__)); \
  } while (0)

namespace imp {

// Training cannot go on: a non-finite loss, or a data pipeline failure.
class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace imp
