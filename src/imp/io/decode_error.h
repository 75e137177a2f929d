// The error every decoder (image, video, audio, tar shard) throws for input it
// cannot read. Besides the full message, it carries a short reason such as
// "image: truncated" or "video: no video stream", so that a data pipeline can
// count skipped samples per reason and report them.
#pragma once

#include <string>
#include <utility>

#include "imp/core/error.h"

namespace imp {

class DecodeError : public DataError {
 public:
  // `reason`: "<modality or container>: <what went wrong>", lower case, with
  // no file names or numbers in it, so that equal causes share one counter.
  // `message`: the complete message, naming the file or sample and what to do.
  DecodeError(std::string reason, const std::string& message)
      : DataError(message), reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

}  // namespace imp

// Throws DecodeError(reason, message pieces joined) when `cond` is false.
#define IMP_REQUIRE_DECODE(cond, reason, ...)                          \
  do {                                                                  \
    if (!(cond)) throw ::imp::DecodeError(reason, ::imp::str_cat(__VA_ARGS__)); \
  } while (0)
