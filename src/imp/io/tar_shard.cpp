// WebDataset tar shards: header-only indexing, member reads, the shard writer
// and brace-pattern expansion. The tar layout follows POSIX.1-2017 "pax"
// (ustar header and extended headers) and the GNU tar manual's "Standard"
// section (GNU magic, long names, base-256 numbers, old sparse headers).
#include "imp/io/tar_shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <optional>
#include <stdexcept>
#include <unordered_set>
#include <utility>

#include "imp/core/error.h"
#include "imp/io/decode_error.h"

namespace imp {
namespace {

constexpr uint64_t kBlock = 512;

// Byte offsets and lengths of the ustar header fields.
constexpr size_t kNameOffset = 0, kNameLength = 100;
constexpr size_t kModeOffset = 100, kModeLength = 8;
constexpr size_t kUidOffset = 108, kGidOffset = 116, kIdLength = 8;
constexpr size_t kSizeOffset = 124, kSizeLength = 12;
constexpr size_t kMtimeOffset = 136, kMtimeLength = 12;
constexpr size_t kChecksumOffset = 148, kChecksumLength = 8;
constexpr size_t kTypeflagOffset = 156;
constexpr size_t kMagicOffset = 257, kVersionOffset = 263;
constexpr size_t kDevMajorOffset = 329, kDevMinorOffset = 337, kDevLength = 8;
constexpr size_t kPrefixOffset = 345, kPrefixLength = 155;

// Old GNU sparse headers: a flag saying that 512-byte blocks listing more
// sparse regions follow the header, and the same flag in each such block.
constexpr size_t kGnuSparseExtendedOffset = 482;
constexpr size_t kGnuSparseBlockExtendedOffset = 504;

// GNU long-name and PAX header data is read into memory. This bound keeps a
// corrupt size field from allocating gigabytes. Linux paths are at most 4096
// bytes (PATH_MAX), so real headers stay far below it.
constexpr uint64_t kMaxExtensionHeaderData = 16u << 20;

uint64_t padded_to_block(uint64_t size) { return (size + kBlock - 1) / kBlock * kBlock; }

// `text` in double quotes, with bytes outside printable ASCII written as
// \xNN so that a damaged header cannot put control bytes on a terminal.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  return out + "\"";
}

std::string errno_text() { return std::strerror(errno); }

// A file descriptor closed at scope exit.
class FileHandle {
 public:
  explicit FileHandle(int fd) : fd_(fd) {}
  ~FileHandle() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

FileHandle open_shard(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw DecodeError("shard: cannot open",
                      str_cat("cannot open shard ", path, ": ", errno_text(),
                              ". Check the shard path or pattern in the data configuration."));
  }
  return FileHandle(fd);
}

// Reads up to `size` bytes at `offset`, retrying short reads. Returns the
// number of bytes read, which is less than `size` only at the end of the
// file, or -1 with errno set on a read error.
int64_t read_at(int fd, char* buffer, size_t size, uint64_t offset) {
  size_t done = 0;
  while (done < size) {
    const ssize_t count = ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + done));
    if (count < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (count == 0) break;
    done += static_cast<size_t>(count);
  }
  return static_cast<int64_t>(done);
}

// ---------------------------------------------------------------------------
// Header fields

using Block = char[kBlock];

bool is_zero_block(const Block block) {
  return std::all_of(block, block + kBlock, [](char c) { return c == 0; });
}

// Parses a numeric header field: octal digits, optionally led by spaces and
// ended by a NUL or space, or GNU base-256 (first byte's high bit set, then a
// big-endian two's complement number). Returns nothing for malformed fields,
// negative numbers and values beyond 64 bits.
std::optional<uint64_t> parse_number(const char* field, size_t length) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(field);
  if (bytes[0] & 0x80) {
    if (bytes[0] & 0x40) return std::nullopt;  // Negative: sizes and checksums never are.
    uint64_t value = bytes[0] & 0x3f;
    for (size_t i = 1; i < length; ++i) {
      if (value > (std::numeric_limits<uint64_t>::max() >> 8)) return std::nullopt;
      value = (value << 8) | bytes[i];
    }
    return value;
  }

  size_t i = 0;
  while (i < length && field[i] == ' ') ++i;
  uint64_t value = 0;
  for (; i < length && field[i] != '\0' && field[i] != ' '; ++i) {
    if (field[i] < '0' || field[i] > '7') return std::nullopt;
    if (value > (std::numeric_limits<uint64_t>::max() >> 3)) return std::nullopt;
    value = (value << 3) | static_cast<uint64_t>(field[i] - '0');
  }
  // Only NULs and spaces may follow the digits.
  for (; i < length; ++i) {
    if (field[i] != '\0' && field[i] != ' ') return std::nullopt;
  }
  return value;
}

// A text field of at most `length` bytes, NUL-terminated unless it is full.
std::string text_field(const char* field, size_t length) {
  return std::string(field, strnlen(field, length));
}

// The header checksum is the sum of its 512 bytes with the checksum field
// counted as eight spaces. POSIX sums unsigned bytes, but some old tar programs
// summed signed chars, so either sum is accepted. Returns an empty string when
// the checksum matches, or else a description of the mismatch.
std::string checksum_mismatch(const Block block) {
  const std::optional<uint64_t> stored = parse_number(block + kChecksumOffset, kChecksumLength);
  int64_t unsigned_sum = 0, signed_sum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    const bool in_checksum = i >= kChecksumOffset && i < kChecksumOffset + kChecksumLength;
    const char byte = in_checksum ? ' ' : block[i];
    unsigned_sum += static_cast<unsigned char>(byte);
    signed_sum += static_cast<signed char>(byte);
  }
  if (!stored) return str_cat("the checksum field ", quoted(text_field(block + kChecksumOffset, kChecksumLength)),
                              " is not an octal number");
  const auto stored_sum = static_cast<int64_t>(*stored);
  if (stored_sum == unsigned_sum || stored_sum == signed_sum) return "";
  return str_cat("the checksum field is ", stored_sum, " but the header bytes sum to ", unsigned_sum);
}

enum class HeaderFormat { kPosixUstar, kGnu, kV7 };

HeaderFormat header_format(const Block block) {
  if (std::memcmp(block + kMagicOffset, "ustar\0", 6) == 0) return HeaderFormat::kPosixUstar;
  if (std::memcmp(block + kMagicOffset, "ustar  \0", 8) == 0) return HeaderFormat::kGnu;
  return HeaderFormat::kV7;
}

// The member path stored in the header itself: the name field, led by the
// prefix field and a '/' in POSIX ustar headers. GNU headers use the prefix
// bytes for other fields, and v7 headers have none.
std::string header_path(const Block block) {
  const std::string name = text_field(block + kNameOffset, kNameLength);
  if (header_format(block) != HeaderFormat::kPosixUstar) return name;
  const std::string prefix = text_field(block + kPrefixOffset, kPrefixLength);
  return prefix.empty() ? name : prefix + "/" + name;
}

// ---------------------------------------------------------------------------
// Member paths and keys

// Removes every leading "./" ("././a.jpg" -> "a.jpg").
std::string strip_dot_slash(std::string path) {
  size_t start = 0;
  while (path.compare(start, 2, "./") == 0) {
    start += 2;
    while (start < path.size() && path[start] == '/') ++start;
  }
  return path.substr(start);
}

// Absolute paths and paths with a ".." component could escape the folder a
// user extracts the shard into, so such members are rejected.
bool is_unsafe_path(const std::string& path) {
  if (!path.empty() && path[0] == '/') return true;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, "..") == 0 && end - start == 2) return true;
    start = end + 1;
  }
  return false;
}

// Splits "dir/000123.seg.JPG" into key "dir/000123" and extension "seg.jpg".
// Returns false when the last component has no '.' with text on both sides
// of it, as webdataset's key pattern requires.
bool split_key(const std::string& path, std::string& key, std::string& extension) {
  const size_t component_start = path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1;
  const size_t dot = path.find('.', component_start);
  if (dot == std::string::npos || dot == component_start || dot + 1 == path.size()) return false;
  key = path.substr(0, dot);
  extension = path.substr(dot + 1);
  for (char& c : extension) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return true;
}

// ---------------------------------------------------------------------------
// PAX extended header records: "<length> <keyword>=<value>\n", where <length>
// is the decimal byte count of the whole record, its own digits included.

struct PaxOverrides {
  std::optional<std::string> path;
  std::optional<uint64_t> size;
};

std::optional<uint64_t> parse_decimal(const std::string& text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

// Parses the records into `overrides`. Returns an empty string on success, or
// else what is wrong with the records.
std::string parse_pax_records(const std::string& data, PaxOverrides& overrides) {
  size_t position = 0;
  while (position < data.size()) {
    // GNU tar and others pad the last block with NULs after the records.
    if (data[position] == '\0') break;
    const size_t space = data.find(' ', position);
    if (space == std::string::npos) return str_cat("a record at byte ", position, " has no length");
    const std::optional<uint64_t> length = parse_decimal(data.substr(position, space - position));
    if (!length || *length <= space - position || position + *length > data.size() ||
        data[position + *length - 1] != '\n') {
      return str_cat("the record at byte ", position, " has an invalid length");
    }
    const std::string record = data.substr(space + 1, position + *length - 1 - (space + 1));
    const size_t equals = record.find('=');
    if (equals == std::string::npos) return str_cat("the record at byte ", position, " has no '='");
    const std::string keyword = record.substr(0, equals);
    const std::string value = record.substr(equals + 1);
    if (keyword == "path") {
      overrides.path = value;
    } else if (keyword == "size") {
      overrides.size = parse_decimal(value);
      if (!overrides.size) return str_cat("the size record ", quoted(value), " is not a decimal number");
    }
    position += *length;
  }
  return "";
}

// ---------------------------------------------------------------------------
// Shard scanning

// Returns the kind of entry a typeflag marks, for "skipped entry" messages.
std::string entry_kind(char typeflag) {
  switch (typeflag) {
    case '1': return "a hard link";
    case '2': return "a symbolic link";
    case '3': return "a character device";
    case '4': return "a block device";
    case '5': return "a directory";
    case '6': return "a FIFO";
    case 'S': return "a GNU sparse file";
    case 'V': return "a GNU volume label";
    case 'M': return "a GNU multi-volume continuation";
    case 'D': return "a GNU directory dump";
    default: return str_cat("an entry of unknown type '", typeflag, "'");
  }
}

class ShardScanner {
 public:
  ShardScanner(std::string path, int fd, uint64_t file_size)
      : fd_(fd), file_size_(file_size) {
    index_.path = std::move(path);
  }

  ShardIndex scan() {
    uint64_t offset = 0;
    while (true) {
      Block block;
      const int64_t count = read_at(fd_, block, kBlock, offset);
      if (count < 0) {
        throw DecodeError("shard: read failed", str_cat("failed to read shard ", index_.path, " at byte ", offset,
                                                        ": ", errno_text()));
      }
      if (count < static_cast<int64_t>(kBlock)) {
        if (offset == 0) throw not_a_tar_file(str_cat("it is ", count, " bytes long, less than one tar header"));
        if (count > 0) {
          stop_truncated(str_cat("inside the tar header at byte ", offset));
        } else if (offset > file_size_) {
          stop_truncated(str_cat("inside the padding after a member, ", offset - file_size_,
                                         " bytes before the next header would start at byte ", offset));
        } else if (has_pending_extension()) {
          stop_truncated(str_cat("right after the extended headers of a member, at byte ", offset));
        } else {
          // The file ends at a block boundary after a member: an archive
          // without its end blocks, or one cut between two members. The two
          // cannot be distinguished, and GNU tar 1.34 and Python's tarfile
          // list such a file without error.
          end_current_sample();
        }
        break;
      }
      if (is_zero_block(block)) {
        // The end of the archive. POSIX requires two zero blocks, but the
        // first is enough to stop at, as GNU tar does.
        if (has_pending_extension()) {
          stop_truncated(str_cat("right after the extended headers of a member, at byte ", offset));
        } else {
          end_current_sample();
        }
        break;
      }

      const std::string mismatch = checksum_mismatch(block);
      if (!mismatch.empty()) {
        if (offset == 0) throw not_a_tar_file("its first 512 bytes are not a tar header: " + mismatch);
        stop_corrupt(offset, mismatch);
        break;
      }
      const std::optional<uint64_t> next = process_header(block, offset);
      if (!next) break;
      offset = *next;
    }
    return std::move(index_);
  }

 private:
  DecodeError not_a_tar_file(const std::string& cause) const {
    return DecodeError("shard: not a tar file",
                       str_cat("shard ", index_.path, " is not a tar file: ", cause,
                               ". Shards must be tar files (webdataset format)."));
  }

  bool has_pending_extension() const { return long_name_ || pax_.path || pax_.size; }

  // Handles the header at `offset`. Returns the offset of the next header, or
  // nothing when scanning stopped at a truncated or corrupt member.
  std::optional<uint64_t> process_header(const Block block, uint64_t offset) {
    const char typeflag = block[kTypeflagOffset];
    const std::optional<uint64_t> header_size = parse_number(block + kSizeOffset, kSizeLength);
    if (!header_size) {
      stop_corrupt(offset, str_cat("the size field ", quoted(text_field(block + kSizeOffset, kSizeLength)),
                                   " is not a number"));
      return std::nullopt;
    }

    // Extension headers describe the next member: its long name or its PAX
    // records. Their data is read, but a long link target is only skipped.
    if (typeflag == 'L' || typeflag == 'x') {
      std::string data;
      if (!read_extension_data(offset, *header_size, data)) return std::nullopt;
      if (typeflag == 'L') {
        long_name_ = text_field(data.data(), data.size());
      } else {
        const std::string error = parse_pax_records(data, pax_);
        if (!error.empty()) {
          stop_corrupt(offset, "its PAX extended header is malformed: " + error);
          return std::nullopt;
        }
      }
      return offset + kBlock + padded_to_block(*header_size);
    }
    if (typeflag == 'K' || typeflag == 'g') {
      if (!data_is_present(offset, offset + kBlock, *header_size, "")) return std::nullopt;
      return offset + kBlock + padded_to_block(*header_size);
    }

    // An ordinary header: take the pending long name or PAX records, if any.
    std::string path = header_path(block);
    if (long_name_) path = *long_name_;
    if (pax_.path) path = *pax_.path;
    uint64_t size = pax_.size ? *pax_.size : *header_size;
    long_name_.reset();
    pax_ = PaxOverrides();
    path = strip_dot_slash(path);

    // Old GNU sparse files list further sparse regions in extra blocks
    // between the header and the data.
    // NOTE: GNU sparse files in PAX format (GNU.sparse.* records) are stored as
    // regular members whose data starts with the sparse map, so they are
    // indexed as ordinary members with that map in their bytes.
    uint64_t data_offset = offset + kBlock;
    if (typeflag == 'S' && block[kGnuSparseExtendedOffset] != 0) {
      const std::optional<uint64_t> after = skip_sparse_blocks(data_offset, path);
      if (!after) return std::nullopt;
      data_offset = *after;
    }

    // POSIX stores no data after links, devices, directories and FIFOs. Every
    // other entry, including unknown types, is followed by `size` bytes.
    const bool has_data = !(typeflag >= '1' && typeflag <= '6');
    const uint64_t data_size = has_data ? size : 0;
    const bool is_regular = typeflag == '0' || typeflag == '\0' || typeflag == '7';
    const bool is_directory = typeflag == '5' || (is_regular && !path.empty() && path.back() == '/');

    // A member with a new key ends the current sample before its data is
    // checked, so that a cut inside it drops only its own sample.
    std::string key, extension;
    const bool has_key = is_regular && !is_directory && split_key(path, key, extension);
    if (has_key) start_sample_if_new(key, path, offset);

    // This check also keeps the offset arithmetic below from overflowing.
    if (!data_is_present(offset, data_offset, data_size, path)) return std::nullopt;
    if (has_key) {
      add_member(path, key, extension, offset, data_offset, size);
    } else if (is_regular && !is_directory) {
      skip_keyless_file(path, offset);
    } else {
      skip_entry(path, offset, is_directory ? "a directory" : entry_kind(typeflag));
    }
    return data_offset + padded_to_block(data_size);
  }

  // Reads the data of a long-name or PAX header at `offset` into `data`.
  bool read_extension_data(uint64_t offset, uint64_t size, std::string& data) {
    if (size > kMaxExtensionHeaderData) {
      stop_corrupt(offset, str_cat("its extended header claims ", size, " bytes of data, more than the ",
                                   kMaxExtensionHeaderData, " this reader accepts"));
      return false;
    }
    if (!data_is_present(offset, offset + kBlock, size, "")) return false;
    data.resize(size);
    const int64_t count = read_at(fd_, data.data(), size, offset + kBlock);
    if (count != static_cast<int64_t>(size)) {
      throw DecodeError("shard: read failed", str_cat("failed to read the extended header at byte ", offset,
                                                      " of shard ", index_.path, ": ",
                                                      count < 0 ? errno_text() : "the file ended early"));
    }
    return true;
  }

  // Skips the extra sparse-region blocks that start at `offset`. Returns the
  // offset after them, or nothing when the file ends or a block is unreadable.
  std::optional<uint64_t> skip_sparse_blocks(uint64_t offset, const std::string& path) {
    while (true) {
      Block block;
      const int64_t count = read_at(fd_, block, kBlock, offset);
      if (count != static_cast<int64_t>(kBlock)) {
        stop_truncated(str_cat("inside the sparse map of member ", quoted(path), " at byte ", offset));
        return std::nullopt;
      }
      offset += kBlock;
      if (block[kGnuSparseBlockExtendedOffset] == 0) return offset;
    }
  }

  // Checks that `size` data bytes from `data_offset` are in the file, and
  // stops scanning as truncated when they are not.
  bool data_is_present(uint64_t header_offset, uint64_t data_offset, uint64_t size, const std::string& path) {
    if (data_offset <= file_size_ && size <= file_size_ - data_offset) return true;
    const std::string subject = path.empty() ? std::string("an extended header") : "member " + quoted(path);
    stop_truncated(str_cat("inside the data of ", subject, " (header at byte ", header_offset,
                                          "), which needs ", size, " bytes from byte ", data_offset));
    return false;
  }

  // Adds a member of the current sample, whose key start_sample_if_new set.
  void add_member(const std::string& path, const std::string& key, const std::string& extension,
                  uint64_t header_offset, uint64_t data_offset, uint64_t size) {
    if (current_rejected_) return;

    if (is_unsafe_path(path)) {
      reject_current("shard: unsafe member path",
                     str_cat(in_shard(), member_at(path, header_offset), " has an unsafe path (absolute or with a \"..\" "
                                                             "component), so sample ",
                             quoted(key), " was skipped"));
      return;
    }
    const auto existing = current_.members.find(extension);
    if (existing != current_.members.end()) {
      reject_current("shard: duplicate member",
                     str_cat(in_shard(), member_at(path, header_offset), " has the same extension ", quoted(extension),
                             " as member ", quoted(existing->second.name), " of the same key, so sample ",
                             quoted(key), " was skipped. Each sample may have one file per extension."));
      return;
    }
    current_.members.emplace(extension, TarMember{path, data_offset, size});
  }

  void skip_keyless_file(const std::string& path, uint64_t header_offset) {
    if (is_unsafe_path(path)) {
      add_problem("shard: unsafe member path",
                  str_cat(in_shard(), member_at(path, header_offset),
                          " has an unsafe path (absolute or with a \"..\" component) and was skipped"));
    } else {
      skip_entry(path, header_offset, "a regular file whose name has no extension, so it has no sample key");
    }
  }

  // Ends the current sample when `key` differs from it, and starts a new one.
  // A key seen before means the shard splits a sample.
  void start_sample_if_new(const std::string& key, const std::string& path, uint64_t header_offset) {
    if (has_current_ && key == current_.key) return;
    end_current_sample();
    if (!seen_keys_.insert(key).second) {
      throw DecodeError("shard: split sample",
                        str_cat(in_shard(), member_at(path, header_offset), " belongs to key ",
                                quoted(key), ", which appeared earlier with other keys in between. The files "
                                "of a sample must be adjacent: rewrite the shard with its members sorted by key."));
    }
    current_ = ShardSample();
    current_.key = key;
    has_current_ = true;
    current_rejected_ = false;
  }

  void end_current_sample() {
    if (has_current_ && !current_rejected_) index_.samples.push_back(std::move(current_));
    has_current_ = false;
  }

  void reject_current(const std::string& reason, const std::string& message) {
    current_rejected_ = true;
    current_.members.clear();
    add_problem(reason, message);
  }

  void skip_entry(const std::string& path, uint64_t header_offset, const std::string& kind) {
    add_problem("shard: skipped entry", str_cat(in_shard(), member_at(path, header_offset), " was skipped: it is ", kind));
  }

  // Stops scanning at a cut: the sample being read is dropped, because the cut
  // may have removed some of its members.
  void stop_truncated(const std::string& where) {
    index_.truncated = true;
    add_problem("shard: truncated", str_cat("shard ", index_.path, " is truncated: it ends ", where,
                                            " (a file of ", file_size_, " bytes)", dropped_sample_note(),
                                            ". Samples before it are still used. Rewrite or download the shard again."));
  }

  // Stops scanning at a header that cannot be trusted. What follows it cannot
  // be located, so this is handled like a cut.
  void stop_corrupt(uint64_t offset, const std::string& cause) {
    index_.truncated = true;
    add_problem("shard: corrupt header",
                str_cat("shard ", index_.path, " has a corrupt tar header at byte ", offset, ": ", cause,
                        ". Scanning stopped there", dropped_sample_note(),
                        ". Samples before it are still used. Rewrite or download the shard again."));
  }

  std::string dropped_sample_note() const {
    if (!has_current_ || current_rejected_) return "";
    return str_cat(", so sample ", quoted(current_.key), " was dropped");
  }

  std::string in_shard() const { return str_cat("shard ", index_.path, ": "); }

  static std::string member_at(const std::string& path, uint64_t header_offset) {
    return str_cat("member ", quoted(path), " (header at byte ", header_offset, ")");
  }

  void add_problem(const std::string& reason, const std::string& message) {
    index_.problems.push_back({reason, message});
  }

  int fd_;
  uint64_t file_size_;
  ShardIndex index_;

  // Extension headers waiting for the member they describe.
  std::optional<std::string> long_name_;
  PaxOverrides pax_;

  // The sample being collected. A rejected one stays current, so that its
  // remaining members are skipped, but never reaches index_.samples.
  ShardSample current_;
  bool has_current_ = false;
  bool current_rejected_ = false;
  std::unordered_set<std::string> seen_keys_;
};

// ---------------------------------------------------------------------------
// Brace expansion

// Returns the position of the '}' that closes the '{' at `open`, or npos.
size_t matching_brace(const std::string& text, size_t open) {
  int depth = 0;
  for (size_t i = open; i < text.size(); ++i) {
    if (text[i] == '{') ++depth;
    if (text[i] == '}' && --depth == 0) return i;
  }
  return std::string::npos;
}

// Splits a group's body at commas outside nested groups.
std::vector<std::string> split_alternatives(const std::string& body) {
  std::vector<std::string> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '{') ++depth;
    if (body[i] == '}') --depth;
    if (body[i] == ',' && depth == 0) {
      parts.push_back(body.substr(start, i - start));
      start = i + 1;
    }
  }
  parts.push_back(body.substr(start));
  return parts;
}

ConfigError brace_error(const std::string& pattern, const std::string& problem) {
  return ConfigError(str_cat("invalid shard pattern ", quoted(pattern), ": ", problem,
                             ". Write ranges as {000000..000127} and lists as {a,b,c}."));
}

// Expands "first..last" (decimal bounds) into its numbers, zero-padded to the
// width of `first` when `first` has leading zeros.
std::vector<std::string> expand_range(const std::string& body, const std::string& pattern) {
  const size_t dots = body.find("..");
  const std::string first_text = body.substr(0, dots);
  const std::string last_text = body.substr(dots + 2);
  const std::optional<uint64_t> first = parse_decimal(first_text);
  const std::optional<uint64_t> last = parse_decimal(last_text);
  if (!first || !last) {
    throw brace_error(pattern, str_cat("the range {", body, "} needs two decimal numbers as bounds (steps and "
                                       "letters are not supported)"));
  }
  const size_t width = first_text.size() > 1 && first_text[0] == '0' ? first_text.size() : 0;
  std::vector<std::string> numbers;
  const int64_t step = *first <= *last ? 1 : -1;
  for (uint64_t n = *first;; n += static_cast<uint64_t>(step)) {
    std::string text = std::to_string(n);
    if (text.size() < width) text.insert(0, width - text.size(), '0');
    numbers.push_back(std::move(text));
    if (n == *last) break;
  }
  return numbers;
}

std::vector<std::string> expand_from(const std::string& text, const std::string& pattern) {
  const size_t open = text.find('{');
  const size_t stray_close = text.find('}');
  if (stray_close != std::string::npos && (open == std::string::npos || stray_close < open)) {
    throw brace_error(pattern, "a '}' has no matching '{'");
  }
  if (open == std::string::npos) return {text};

  const size_t close = matching_brace(text, open);
  if (close == std::string::npos) throw brace_error(pattern, "a '{' has no matching '}'");
  const std::string body = text.substr(open + 1, close - open - 1);
  if (body.empty()) throw brace_error(pattern, "it has an empty group {}");

  std::vector<std::string> alternatives;
  const std::vector<std::string> parts = split_alternatives(body);
  if (parts.size() == 1 && body.find("..") != std::string::npos && body.find('{') == std::string::npos) {
    alternatives = expand_range(body, pattern);
  } else {
    for (const std::string& part : parts) {
      for (std::string& expanded : expand_from(part, pattern)) alternatives.push_back(std::move(expanded));
    }
  }

  const std::string prefix = text.substr(0, open);
  const std::vector<std::string> rests = expand_from(text.substr(close + 1), pattern);
  std::vector<std::string> result;
  result.reserve(alternatives.size() * rests.size());
  for (const std::string& alternative : alternatives) {
    for (const std::string& rest : rests) result.push_back(prefix + alternative + rest);
  }
  return result;
}

// ---------------------------------------------------------------------------
// Writing

void write_octal(char* field, size_t length, uint64_t value) {
  // length - 1 digits and a terminating NUL, the form GNU tar writes.
  for (size_t i = length - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (value & 7));
    value >>= 3;
  }
  field[length - 1] = '\0';
}

// Writes the size field in octal when it fits in 11 digits (below 8 GiB) and
// in GNU base-256 otherwise.
void write_size(char* field, uint64_t size) {
  if (size < (uint64_t{1} << 33)) {
    write_octal(field, kSizeLength, size);
    return;
  }
  std::memset(field, 0, kSizeLength);
  field[0] = static_cast<char>(0x80);
  for (size_t i = kSizeLength; i-- > 1 && size != 0;) {
    field[i] = static_cast<char>(size & 0xff);
    size >>= 8;
  }
}

bool needs_pax_path(const std::string& name) {
  if (name.size() > kNameLength) return true;
  return std::any_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

// The name field for a member whose real name is in a PAX header: its first
// 100 bytes with non-ASCII bytes replaced, for readers that ignore PAX.
std::string ascii_fallback(const std::string& name) {
  std::string result = name.substr(0, kNameLength);
  for (char& c : result) {
    if (static_cast<unsigned char>(c) >= 0x80) c = '_';
  }
  return result;
}

// A PAX record "<length> <keyword>=<value>\n". The length counts its own
// digits, so it is found by trying lengths until the digit count is stable.
std::string pax_record(const std::string& keyword, const std::string& value) {
  const size_t body = 1 + keyword.size() + 1 + value.size() + 1;
  size_t length = body + 1;
  while (std::to_string(length).size() + body != length) length = std::to_string(length).size() + body;
  return std::to_string(length) + " " + keyword + "=" + value + "\n";
}

std::string validate_member_name(const std::string& name) {
  if (name.empty()) return "it is empty";
  if (name.find('\0') != std::string::npos) return "it contains a NUL byte";
  if (name[0] == '/') return "it is absolute";
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    const std::string component = name.substr(start, end - start);
    if (component.empty()) return "it has an empty path component";
    if (component == "." || component == "..") return "it has a \"" + component + "\" path component";
    start = end + 1;
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------

ShardIndex index_shard(const std::string& path) {
  const FileHandle file = open_shard(path);
  struct stat info {};
  if (::fstat(file.get(), &info) != 0) {
    throw DecodeError("shard: cannot open", str_cat("cannot read the size of shard ", path, ": ", errno_text()));
  }
  if (!S_ISREG(info.st_mode)) {
    throw DecodeError("shard: cannot open", str_cat("shard ", path, " is not a regular file. Check the shard path."));
  }
  ShardScanner scanner(path, file.get(), static_cast<uint64_t>(info.st_size));
  return scanner.scan();
}

std::string read_member(const std::string& shard_path, const TarMember& member) {
  const FileHandle file = open_shard(shard_path);
  if (member.size > std::string().max_size()) {
    throw DecodeError("shard: read failed", str_cat("member ", quoted(member.name), " of shard ", shard_path, " is ",
                                                    member.size, " bytes, too large to read into memory"));
  }
  std::string data(member.size, '\0');
  const int64_t count = read_at(file.get(), data.data(), data.size(), member.offset);
  if (count != static_cast<int64_t>(member.size)) {
    throw DecodeError("shard: read failed",
                      str_cat("failed to read member ", quoted(member.name), " (", member.size, " bytes at byte ",
                              member.offset, ") of shard ", shard_path, ": ",
                              count < 0 ? errno_text() : str_cat("only ", count, " bytes were read"),
                              ". The shard may have changed since it was indexed."));
  }
  return data;
}

std::vector<std::string> expand_braces(const std::string& pattern) { return expand_from(pattern, pattern); }

ShardWriter::ShardWriter(std::string path)
    : path_(std::move(path)), temporary_path_(path_ + ".tmp"), mtime_(static_cast<int64_t>(std::time(nullptr))) {
  fd_ = ::open(temporary_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  IMP_REQUIRE(DataError, fd_ >= 0, "failed to create shard file ", temporary_path_, ": ", errno_text());
}

ShardWriter::~ShardWriter() {
  if (closed_) return;
  if (fd_ >= 0) ::close(fd_);
  ::unlink(temporary_path_.c_str());
}

void ShardWriter::write_all(const char* data, size_t size) {
  while (size > 0) {
    const ssize_t count = ::write(fd_, data, size);
    if (count < 0 && errno == EINTR) continue;
    IMP_REQUIRE(DataError, count > 0, "failed to write shard file ", temporary_path_, ": ", errno_text());
    data += count;
    size -= static_cast<size_t>(count);
    bytes_written_ += static_cast<uint64_t>(count);
  }
}

void ShardWriter::write_header(const std::string& name, uint64_t size, char typeflag) {
  Block block;
  std::memset(block, 0, kBlock);
  std::memcpy(block + kNameOffset, name.data(), std::min(name.size(), kNameLength));
  write_octal(block + kModeOffset, kModeLength, 0644);
  write_octal(block + kUidOffset, kIdLength, 0);
  write_octal(block + kGidOffset, kIdLength, 0);
  write_size(block + kSizeOffset, size);
  write_octal(block + kMtimeOffset, kMtimeLength, static_cast<uint64_t>(std::max<int64_t>(mtime_, 0)));
  block[kTypeflagOffset] = typeflag;
  std::memcpy(block + kMagicOffset, "ustar", 6);  // With its NUL.
  std::memcpy(block + kVersionOffset, "00", 2);
  write_octal(block + kDevMajorOffset, kDevLength, 0);
  write_octal(block + kDevMinorOffset, kDevLength, 0);

  // The checksum is computed with its own field as spaces, then written as
  // six octal digits, a NUL and a space.
  std::memset(block + kChecksumOffset, ' ', kChecksumLength);
  uint64_t sum = 0;
  for (char c : block) sum += static_cast<unsigned char>(c);
  write_octal(block + kChecksumOffset, 7, sum);
  block[kChecksumOffset + 7] = ' ';
  write_all(block, kBlock);
}

void ShardWriter::add(const std::string& name, const std::string& data) {
  if (closed_) throw std::logic_error("ShardWriter::add called after close() for shard " + path_);
  const std::string problem = validate_member_name(name);
  IMP_REQUIRE(DataError, problem.empty(), "cannot add member ", quoted(name), " to shard ", path_, ": ", problem,
              ". Member names must be relative paths without \".\" or \"..\" components.");

  static const char kZeros[kBlock] = {};
  if (needs_pax_path(name)) {
    const std::string records = pax_record("path", name);
    const size_t slash = name.rfind('/');
    const std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
    write_header(ascii_fallback("PaxHeaders/" + base), records.size(), 'x');
    write_all(records.data(), records.size());
    write_all(kZeros, padded_to_block(records.size()) - records.size());
  }
  write_header(needs_pax_path(name) ? ascii_fallback(name) : name, data.size(), '0');
  write_all(data.data(), data.size());
  write_all(kZeros, padded_to_block(data.size()) - data.size());
}

void ShardWriter::close() {
  if (closed_) return;
  static const char kEndBlocks[2 * kBlock] = {};
  write_all(kEndBlocks, sizeof(kEndBlocks));
  IMP_REQUIRE(DataError, ::fsync(fd_) == 0, "failed to flush shard file ", temporary_path_, ": ", errno_text());
  const int result = ::close(fd_);
  fd_ = -1;
  IMP_REQUIRE(DataError, result == 0, "failed to close shard file ", temporary_path_, ": ", errno_text());
  IMP_REQUIRE(DataError, ::rename(temporary_path_.c_str(), path_.c_str()) == 0, "failed to rename ", temporary_path_,
              " to ", path_, ": ", errno_text());
  closed_ = true;

  // The rename is durable only once the folder holding it is flushed too.
  const size_t slash = path_.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
  const int folder_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  IMP_REQUIRE(DataError, folder_fd >= 0, "failed to open folder ", folder, " to flush the rename of shard ", path_,
              ": ", errno_text());
  const int sync_result = ::fsync(folder_fd);
  ::close(folder_fd);
  IMP_REQUIRE(DataError, sync_result == 0, "failed to flush folder ", folder, " after writing shard ", path_, ": ",
              errno_text());
}

uint64_t ShardWriter::bytes_written() const { return bytes_written_; }

}  // namespace imp
