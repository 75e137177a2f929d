// UTF-8 validity for text that comes from user data (captions, class names,
// file names inside tar shards). JSON output and logs need valid UTF-8:
// nlohmann::json throws on invalid bytes when it writes.
#pragma once

#include <string>

namespace imp {

// True when `text` is well-formed UTF-8 (no overlong forms, no surrogates,
// nothing above U+10FFFF).
bool is_valid_utf8(const std::string& text);

// `text` with every byte that is not part of a well-formed UTF-8 sequence
// replaced by U+FFFD (the replacement character); valid text is returned
// unchanged.
std::string to_valid_utf8(const std::string& text);

}  // namespace imp
