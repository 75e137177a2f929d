// Safetensors reader and writer. The writer builds a plan (the header bytes
// and the contiguous CPU tensors behind them) and streams it to a string or a
// file. The reader checks the whole header before it allocates any tensor,
// then copies each tensor's bytes from a string or straight from the file.
#include "imp/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "imp/core/crc32c.h"
#include "imp/core/error.h"

// Tensor bytes are copied between memory and the file without conversion,
// which is only right when the host stores numbers little-endian as the
// format does.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors.cpp copies tensor data raw and needs a little-endian host");

namespace imp {
namespace {

// ordered_json keeps the keys of a header in file order, so that tensors of
// zero bytes, which share an offset with their neighbor, keep that order.
using Json = nlohmann::ordered_json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr char kReservedPrefix[] = "imp.";
constexpr char kChecksumKey[] = "imp.crc32c";
constexpr char kAliasesKey[] = "imp.aliases";
constexpr uint64_t kLengthFieldBytes = 8;
constexpr uint64_t kHeaderAlignment = 8;
constexpr char kGitLfsPrefix[] = "version https://git-lfs";

struct DtypeInfo {
  const char* name;  // as written in the header
  at::ScalarType type;
  uint64_t element_size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4},  {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8}, {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},  {"I8", at::kChar, 1},    {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};

const DtypeInfo* find_dtype(at::ScalarType type) {
  for (const DtypeInfo& dtype : kDtypes) {
    if (dtype.type == type) return &dtype;
  }
  return nullptr;
}

const DtypeInfo* find_dtype(const std::string& name) {
  for (const DtypeInfo& dtype : kDtypes) {
    if (name == dtype.name) return &dtype;
  }
  return nullptr;
}

std::string supported_dtype_list() {
  std::string list;
  for (const DtypeInfo& dtype : kDtypes) {
    if (!list.empty()) list += ", ";
    list += dtype.name;
  }
  return list;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::string format_checksum(uint32_t checksum) {
  static const char kDigits[] = "0123456789abcdef";
  std::string text(8, '0');
  for (int i = 7; i >= 0; --i) {
    text[i] = kDigits[checksum & 0xfu];
    checksum >>= 4;
  }
  return text;
}

// a + b, or the largest uint64_t when the sum does not fit.
uint64_t saturating_add(uint64_t a, uint64_t b) {
  uint64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? std::numeric_limits<uint64_t>::max() : sum;
}

// ---------------------------------------------------------------------------
// Writing

// One tensor whose bytes go into the data section.
struct StoredTensor {
  std::string name;
  at::Tensor data;  // contiguous, on the CPU
  uint64_t byte_size = 0;
};

// Everything a file needs: the length field and padded header, then the
// bytes of `stored` in order.
struct WritePlan {
  std::string length_and_header;
  std::vector<StoredTensor> stored;
};

// Throws DataError naming `description` when `text` is not valid UTF-8,
// which JSON strings must be.
void require_utf8(const std::string& text, const std::string& description) {
  try {
    (void)Json(text).dump();
  } catch (const Json::type_error& error) {
    throw DataError(str_cat("safetensors: ", description, " is not valid UTF-8 (", error.what(),
                            "); JSON headers can only store UTF-8 text"));
  }
}

void check_caller_metadata(const std::map<std::string, std::string>& metadata) {
  for (const auto& [key, value] : metadata) {
    IMP_REQUIRE(DataError, !starts_with(key, kReservedPrefix), "safetensors: metadata key '", key,
                "' starts with '", kReservedPrefix,
                "', which is reserved for the checksum and aliases that the writer adds itself; "
                "rename the key");
    require_utf8(key, str_cat("metadata key '", key, "'"));
    require_utf8(value, str_cat("the value of metadata key '", key, "'"));
  }
}

void check_tensor_to_write(const std::string& name, const at::Tensor& tensor,
                           const std::set<std::string>& names_so_far) {
  IMP_REQUIRE(DataError, !name.empty(), "safetensors: a tensor has an empty name (tensor number ",
              names_so_far.size() + 1, " of the list); give every tensor a name");
  IMP_REQUIRE(DataError, name != kMetadataKey, "safetensors: the tensor name '", kMetadataKey,
              "' is reserved for the metadata object of the header; rename the tensor");
  IMP_REQUIRE(DataError, names_so_far.count(name) == 0, "safetensors: the tensor name '", name,
              "' appears twice; tensor names in a file must be unique");
  require_utf8(name, str_cat("tensor name '", name, "'"));
  IMP_REQUIRE(DataError, tensor.defined(), "safetensors: tensor '", name,
              "' is undefined (a default-constructed at::Tensor); pass a tensor with data");
  IMP_REQUIRE(DataError, tensor.layout() == at::kStrided, "safetensors: tensor '", name,
              "' has layout ", tensor.layout(),
              ", but safetensors files store dense tensors only; convert it with to_dense()");
  IMP_REQUIRE(DataError, find_dtype(tensor.scalar_type()) != nullptr, "safetensors: tensor '", name,
              "' has dtype ", tensor.scalar_type(),
              ", which safetensors files cannot store; convert it to one of ",
              supported_dtype_list());
}

// Identifies one view of one piece of memory: two tensors with equal keys
// read and write the same bytes in the same way.
using ViewKey = std::tuple<int, int, const void*, int, std::vector<int64_t>, std::vector<int64_t>>;

ViewKey view_key(const at::Tensor& tensor) {
  return ViewKey{static_cast<int>(tensor.device().type()), tensor.device().index(),
                 tensor.data_ptr(), static_cast<int>(tensor.scalar_type()),
                 tensor.sizes().vec(), tensor.strides().vec()};
}

std::string render_header(const std::vector<StoredTensor>& stored,
                          const std::map<std::string, std::string>& metadata,
                          const Json& aliases, uint32_t checksum) {
  Json header = Json::object();

  Json metadata_json = Json::object();
  for (const auto& [key, value] : metadata) metadata_json[key] = value;
  if (!aliases.empty()) metadata_json[kAliasesKey] = aliases.dump();
  metadata_json[kChecksumKey] = format_checksum(checksum);
  header[kMetadataKey] = std::move(metadata_json);

  uint64_t offset = 0;
  for (const StoredTensor& tensor : stored) {
    Json entry = Json::object();
    entry["dtype"] = find_dtype(tensor.data.scalar_type())->name;
    entry["shape"] = tensor.data.sizes().vec();
    entry["data_offsets"] = {offset, offset + tensor.byte_size};
    header[tensor.name] = std::move(entry);
    offset += tensor.byte_size;
  }
  return header.dump();
}

WritePlan plan_write(const NamedTensors& tensors,
                     const std::map<std::string, std::string>& metadata) {
  check_caller_metadata(metadata);

  WritePlan plan;
  std::set<std::string> names;
  std::map<ViewKey, std::string> stored_views;
  Json aliases = Json::object();
  for (const auto& [name, tensor] : tensors) {
    check_tensor_to_write(name, tensor, names);
    names.insert(name);

    // Tensors without elements share no bytes (their data pointers may all
    // be null), so only non-empty ones can be aliases.
    if (tensor.numel() > 0) {
      auto [stored_view, inserted] = stored_views.emplace(view_key(tensor), name);
      if (!inserted) {
        aliases[name] = stored_view->second;
        continue;
      }
    }

    StoredTensor entry;
    entry.name = name;
    entry.data = tensor.detach().to(at::kCPU).contiguous();
    entry.byte_size = entry.data.nbytes();
    plan.stored.push_back(std::move(entry));
  }

  uint32_t checksum = 0;
  for (const StoredTensor& tensor : plan.stored) {
    checksum = crc32c(tensor.data.data_ptr(), tensor.byte_size, checksum);
  }

  std::string header = render_header(plan.stored, metadata, aliases, checksum);
  // Spaces after the JSON align the data section, which starts at
  // 8 + header length, to kHeaderAlignment bytes.
  header.append((kHeaderAlignment - header.size() % kHeaderAlignment) % kHeaderAlignment, ' ');

  const uint64_t header_length = header.size();
  plan.length_and_header.resize(kLengthFieldBytes);
  std::memcpy(plan.length_and_header.data(), &header_length, kLengthFieldBytes);
  plan.length_and_header += header;
  return plan;
}

// An open file descriptor, closed at scope exit unless close() was called.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  int get() const { return fd_; }
  // Closes the descriptor and returns close()'s result, because a failed
  // close can be the first report of a failed write.
  int close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

void write_all(int fd, const void* data, uint64_t size, const std::string& path) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw DataError(str_cat("failed to write safetensors file '", path, "': ",
                              std::strerror(errno), "; check free disk space and permissions"));
    }
    bytes += written;
    size -= static_cast<uint64_t>(written);
  }
}

void fsync_folder(const std::string& folder, const std::string& path) {
  FileDescriptor fd(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) {
    throw DataError(str_cat("safetensors file '", path, "' was renamed into place, but flushing "
                            "its folder '", folder, "' failed: ", std::strerror(errno),
                            "; the new file may be lost if the machine crashes now"));
  }
}

// ---------------------------------------------------------------------------
// Reading

// Random access to the bytes of a file, in memory or on disk.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Copies `count` bytes at `offset` to `destination`. The range lies within
  // size().
  virtual void read(uint64_t offset, uint64_t count, void* destination) const = 0;
};

class StringSource : public ByteSource {
 public:
  explicit StringSource(const std::string& bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  void read(uint64_t offset, uint64_t count, void* destination) const override {
    if (count > 0) std::memcpy(destination, bytes_.data() + offset, count);
  }

 private:
  const std::string& bytes_;
};

class FileSource : public ByteSource {
 public:
  explicit FileSource(const std::string& path)
      : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_.get() < 0) {
      throw DataError(str_cat("failed to open safetensors file '", path, "': ",
                              std::strerror(errno), "; check the path"));
    }
    struct stat status {};
    if (::fstat(fd_.get(), &status) != 0) {
      throw DataError(str_cat("failed to read the size of safetensors file '", path, "': ",
                              std::strerror(errno)));
    }
    IMP_REQUIRE(DataError, S_ISREG(status.st_mode), "safetensors path '", path,
                "' is not a regular file (a folder or device); pass the path of a .safetensors "
                "file");
    size_ = static_cast<uint64_t>(status.st_size);
  }

  uint64_t size() const override { return size_; }

  void read(uint64_t offset, uint64_t count, void* destination) const override {
    auto* bytes = static_cast<char*>(destination);
    while (count > 0) {
      const ssize_t got = ::pread(fd_.get(), bytes, count, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) {
        throw DataError(str_cat("failed to read safetensors file '", path_, "' at byte offset ",
                                offset, ": ", std::strerror(errno)));
      }
      IMP_REQUIRE(DataError, got > 0, "safetensors file '", path_,
                  "' became shorter while it was read (it ended at byte offset ", offset,
                  "); another process is writing it, so wait until it has finished");
      bytes += got;
      offset += static_cast<uint64_t>(got);
      count -= static_cast<uint64_t>(got);
    }
  }

 private:
  std::string path_;
  FileDescriptor fd_;
  uint64_t size_ = 0;
};

// One tensor entry of a header, checked against itself but not yet against
// the other entries or the file size.
struct HeaderEntry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // relative to the data section
  uint64_t end = 0;
};

// Builds DataError messages that start with the file's name.
class Reporter {
 public:
  explicit Reporter(const std::string& what) : what_(what) {}

  template <typename... Args>
  [[noreturn]] void fail(const Args&... parts) const {
    throw DataError(str_cat("safetensors file '", what_, "': ", parts...));
  }

 private:
  std::string what_;
};

constexpr char kRewriteAdvice[] =
    "write the file again with a safetensors writer or download it again";

// Printable ASCII or common whitespace, as in a text file.
bool is_text_byte(unsigned char byte) {
  return (byte >= 0x20 && byte < 0x7f) || byte == '\n' || byte == '\r' || byte == '\t';
}

// The first line of `prefix` with non-printable bytes escaped, for messages.
std::string quote_first_line(const std::string& prefix) {
  std::string line;
  for (unsigned char byte : prefix) {
    if (byte == '\n' || byte == '\r') break;
    if (byte >= 0x20 && byte < 0x7f) {
      line += static_cast<char>(byte);
    } else {
      line += str_cat("\\x", "0123456789abcdef"[byte >> 4], "0123456789abcdef"[byte & 0xf]);
    }
  }
  return "\"" + line + "\"";
}

// Decodes the length field and rejects files that cannot hold the header it
// announces. Returns the header length.
uint64_t read_header_length(const ByteSource& source, const Reporter& report,
                            const SafetensorsReadOptions& options) {
  const uint64_t file_size = source.size();
  std::string prefix(std::min<uint64_t>(file_size, 80), '\0');
  source.read(0, prefix.size(), prefix.data());

  // A Git LFS pointer is what a clone without `git lfs` leaves in place of
  // a large file: a short text that names the real file's hash.
  if (starts_with(prefix, kGitLfsPrefix)) {
    report.fail("the file is a Git LFS pointer (a small text file that stands for the weights), "
                "not the weights themselves; run `git lfs pull` in the repository that contains "
                "it, or download the real file");
  }
  if (file_size < kLengthFieldBytes) {
    report.fail("the file is ", file_size, " bytes long, shorter than the ", kLengthFieldBytes,
                "-byte header length field at its start; the file is empty or was cut off, so "
                "write it again or download it again");
  }

  uint64_t header_length = 0;
  std::memcpy(&header_length, prefix.data(), kLengthFieldBytes);
  const uint64_t bytes_after_length = file_size - kLengthFieldBytes;
  if (header_length <= options.max_header_bytes && header_length <= bytes_after_length) {
    return header_length;
  }

  // Eight printable bytes decode to a length of at least 0x0909090909090909,
  // far more than any header, so such a file is text and not a damaged
  // safetensors file.
  const bool is_text = std::all_of(prefix.begin(), prefix.begin() + kLengthFieldBytes,
                                   [](char byte) { return is_text_byte(byte); });
  if (is_text) {
    report.fail("the file contains text, not safetensors data (it starts with ",
                quote_first_line(prefix),
                "); check that the path names the weights file and that its download finished");
  }
  if (header_length > options.max_header_bytes) {
    report.fail("the header length field at byte offset 0 is ", header_length,
                " bytes, more than the maximum of ", options.max_header_bytes,
                " bytes (SafetensorsReadOptions::max_header_bytes)",
                header_length > bytes_after_length
                    ? str_cat(" and more than the file's ", file_size, " bytes; ", kRewriteAdvice)
                    : std::string("; raise max_header_bytes if the file is genuine"));
  }
  report.fail("the file is truncated: the header length field gives a header of ", header_length,
              " bytes, so the file must be at least ", saturating_add(kLengthFieldBytes, header_length),
              " bytes long, but it has ", file_size,
              " bytes; the file was cut off, so write it again or download it again");
}

// Parses the header JSON, rejecting duplicate top-level keys, which a plain
// parse would silently merge.
Json parse_header_json(const std::string& header, const Reporter& report) {
  std::set<std::string> keys;
  std::string duplicate;
  auto check_duplicate_keys = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !keys.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };

  Json parsed;
  try {
    parsed = Json::parse(header, check_duplicate_keys);
  } catch (const Json::parse_error& error) {
    // error.byte is 1-based and counts from the start of the header.
    const uint64_t file_offset = kLengthFieldBytes + (error.byte > 0 ? error.byte - 1 : 0);
    report.fail("the header is not valid JSON (error near byte offset ", file_offset,
                " of the file: ", error.what(), "); ", kRewriteAdvice);
  }
  if (!duplicate.empty()) {
    report.fail("the header lists the tensor name '", duplicate,
                "' twice, but tensor names must be unique; ", kRewriteAdvice);
  }
  if (!parsed.is_object()) {
    report.fail("the header is JSON of type ", parsed.type_name(),
                ", but it must be an object that maps tensor names to entries; ", kRewriteAdvice);
  }
  return parsed;
}

std::map<std::string, std::string> parse_metadata(const Json& metadata, const Reporter& report) {
  if (!metadata.is_object()) {
    report.fail("the header's \"", kMetadataKey, "\" entry is of type ", metadata.type_name(),
                ", but it must be an object of string values; ", kRewriteAdvice);
  }
  std::map<std::string, std::string> result;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      report.fail("the value of metadata key '", key, "' is of type ", value.type_name(),
                  ", but metadata values must be strings; ", kRewriteAdvice);
    }
    result[key] = value.get<std::string>();
  }
  return result;
}

// Reads a non-negative integer that fits `limit`, or fails naming `field`.
uint64_t read_count(const Json& value, uint64_t limit, const std::string& field,
                    const std::string& tensor_description, const Reporter& report) {
  if (value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0) {
    report.fail(tensor_description, " has a negative value ", value.get<int64_t>(), " in ", field,
                "; ", kRewriteAdvice);
  }
  if (!value.is_number_unsigned()) {
    report.fail(tensor_description, " has ", value.dump(), " in ", field,
                ", but it must be a non-negative integer; ", kRewriteAdvice);
  }
  const uint64_t count = value.get<uint64_t>();
  if (count > limit) {
    report.fail(tensor_description, " has ", count, " in ", field, ", more than the maximum of ",
                limit, "; ", kRewriteAdvice);
  }
  return count;
}

HeaderEntry parse_entry(const std::string& name, const Json& entry, const Reporter& report) {
  const std::string tensor = str_cat("tensor '", name, "'");
  if (!entry.is_object()) {
    report.fail("the header entry of ", tensor, " is of type ", entry.type_name(),
                ", but it must be an object with dtype, shape and data_offsets; ", kRewriteAdvice);
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      report.fail("the header entry of ", tensor, " has no \"", field, "\" field; ",
                  kRewriteAdvice);
    }
  }

  HeaderEntry result;
  result.name = name;

  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    report.fail(tensor, " has dtype ", dtype.dump(), ", but dtype must be a string; ",
                kRewriteAdvice);
  }
  result.dtype = find_dtype(dtype.get<std::string>());
  if (result.dtype == nullptr) {
    report.fail(tensor, " has dtype \"", dtype.get<std::string>(),
                "\", which imp cannot load; supported dtypes are ", supported_dtype_list(),
                ", so convert the tensor before saving the file");
  }

  const Json& shape = entry["shape"];
  if (!shape.is_array()) {
    report.fail(tensor, " has shape ", shape.dump(), ", but shape must be an array of integers; ",
                kRewriteAdvice);
  }
  for (const Json& dimension : shape) {
    const uint64_t size = read_count(dimension, std::numeric_limits<int64_t>::max(), "shape",
                                     tensor, report);
    result.shape.push_back(static_cast<int64_t>(size));
  }

  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    report.fail(tensor, " has data_offsets ", offsets.dump(),
                ", but data_offsets must be an array of two integers [begin, end]; ",
                kRewriteAdvice);
  }
  const uint64_t no_limit = std::numeric_limits<uint64_t>::max();
  result.begin = read_count(offsets[0], no_limit, "data_offsets", tensor, report);
  result.end = read_count(offsets[1], no_limit, "data_offsets", tensor, report);
  if (result.begin > result.end) {
    report.fail(tensor, " has data_offsets [", result.begin, ", ", result.end,
                "] whose begin is after its end; ", kRewriteAdvice);
  }

  // The byte size that dtype and shape imply, with overflow checks because
  // the shape comes from the file.
  uint64_t expected_bytes = result.dtype->element_size;
  for (int64_t size : result.shape) {
    if (__builtin_mul_overflow(expected_bytes, static_cast<uint64_t>(size), &expected_bytes)) {
      report.fail(tensor, " has shape ", format_shape(result.shape),
                  ", whose byte size does not fit in 64 bits; ", kRewriteAdvice);
    }
  }
  if (result.end - result.begin != expected_bytes) {
    report.fail(tensor, " has data_offsets [", result.begin, ", ", result.end, "] covering ",
                result.end - result.begin, " bytes, but dtype ", result.dtype->name,
                " and shape ", format_shape(result.shape), " need ", expected_bytes, " bytes; ",
                kRewriteAdvice);
  }
  return result;
}

// Sorts `entries` by offset and checks that they tile the data section
// exactly: no overlaps, no holes, no bytes missing and none left over.
void check_layout(std::vector<HeaderEntry>& entries, uint64_t data_start, uint64_t file_size,
                  const Reporter& report) {
  // A stable sort keeps zero-byte tensors that share an offset in header
  // order.
  std::stable_sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });

  uint64_t expected_begin = 0;
  const HeaderEntry* previous = nullptr;
  for (const HeaderEntry& entry : entries) {
    if (entry.begin < expected_begin) {
      report.fail("the data of tensor '", entry.name, "' (data_offsets [", entry.begin, ", ",
                  entry.end, "]) overlaps the data of tensor '", previous->name,
                  "' (data_offsets [", previous->begin, ", ", previous->end, "]); ",
                  kRewriteAdvice);
    }
    if (entry.begin > expected_begin) {
      report.fail("the data section has a gap of ", entry.begin - expected_begin,
                  " bytes that no tensor covers, at data offsets [", expected_begin, ", ",
                  entry.begin, ") (file byte offset ", saturating_add(data_start, expected_begin),
                  ") right before tensor '", entry.name, "'; ", kRewriteAdvice);
    }
    expected_begin = entry.end;
    previous = &entry;
  }

  const uint64_t data_size = file_size - data_start;
  if (expected_begin > data_size) {
    const auto first_cut = std::find_if(entries.begin(), entries.end(),
                                        [&](const HeaderEntry& e) { return e.end > data_size; });
    report.fail("the file is truncated: it should be ", saturating_add(data_start, expected_begin),
                " bytes long, but it has ", file_size, " bytes, so the data of tensor '",
                first_cut->name, "' (file byte offsets ", saturating_add(data_start, first_cut->begin),
                " to ", saturating_add(data_start, first_cut->end),
                ") and any after it are missing; the file was cut off, for example by an "
                "interrupted download or a full disk, so write it again or download it again");
  }
  if (expected_begin < data_size) {
    report.fail("the file has ", data_size - expected_begin,
                " bytes after the last tensor's data (from file byte offset ",
                data_start + expected_begin,
                ") that no tensor covers; the file may have been joined with other data or "
                "written by a faulty tool, so write it again");
  }
}

// The checksum and aliases that imp stores in the metadata.
struct ReservedMetadata {
  bool has_checksum = false;
  uint32_t checksum = 0;
  // alias name -> stored name, in the order the file lists them.
  std::vector<std::pair<std::string, std::string>> aliases;
};

uint32_t parse_checksum(const std::string& text, const Reporter& report) {
  const bool well_formed =
      text.size() == 8 && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      });
  if (!well_formed) {
    report.fail("metadata key '", kChecksumKey, "' is \"", text,
                "\", but it must be 8 lowercase hexadecimal digits; the file was edited or "
                "damaged, so write it again");
  }
  return static_cast<uint32_t>(std::stoul(text, nullptr, 16));
}

std::vector<std::pair<std::string, std::string>> parse_aliases(
    const std::string& text, const std::vector<HeaderEntry>& entries, const Reporter& report) {
  const std::string advice = "; the file was edited or damaged, so write it again";
  Json aliases;
  try {
    aliases = Json::parse(text);
  } catch (const Json::parse_error& error) {
    report.fail("metadata key '", kAliasesKey, "' is not valid JSON (", error.what(), ")", advice);
  }
  if (!aliases.is_object()) {
    report.fail("metadata key '", kAliasesKey, "' is JSON of type ", aliases.type_name(),
                ", but it must be an object that maps alias names to tensor names", advice);
  }

  std::set<std::string> stored_names;
  for (const HeaderEntry& entry : entries) stored_names.insert(entry.name);

  std::vector<std::pair<std::string, std::string>> result;
  for (const auto& [alias, target] : aliases.items()) {
    if (!target.is_string()) {
      report.fail("alias '", alias, "' in metadata key '", kAliasesKey, "' maps to ",
                  target.dump(), ", but it must map to a tensor name", advice);
    }
    const std::string& stored = target.get_ref<const std::string&>();
    if (alias.empty() || alias == kMetadataKey || stored_names.count(alias) > 0) {
      report.fail("alias '", alias, "' in metadata key '", kAliasesKey,
                  "' is empty, reserved or also the name of a stored tensor", advice);
    }
    if (stored_names.count(stored) == 0) {
      report.fail("alias '", alias, "' in metadata key '", kAliasesKey,
                  "' names tensor '", stored, "', which is not in the file", advice);
    }
    result.emplace_back(alias, stored);
  }
  return result;
}

// Takes the "imp." keys out of `metadata`. Keys with that prefix other than
// the checksum and aliases are dropped too, so that files from a later imp
// version with more reserved keys still load.
ReservedMetadata take_reserved_metadata(std::map<std::string, std::string>& metadata,
                                        const std::vector<HeaderEntry>& entries,
                                        const Reporter& report) {
  ReservedMetadata reserved;
  if (auto checksum = metadata.find(kChecksumKey); checksum != metadata.end()) {
    reserved.has_checksum = true;
    reserved.checksum = parse_checksum(checksum->second, report);
  }
  if (auto aliases = metadata.find(kAliasesKey); aliases != metadata.end()) {
    reserved.aliases = parse_aliases(aliases->second, entries, report);
  }
  for (auto it = metadata.begin(); it != metadata.end();) {
    it = starts_with(it->first, kReservedPrefix) ? metadata.erase(it) : std::next(it);
  }
  return reserved;
}

// Copies one tensor's bytes from `source` into a new CPU tensor and folds
// them into `checksum`.
at::Tensor read_tensor(const ByteSource& source, const HeaderEntry& entry, uint64_t data_start,
                       uint32_t& checksum, const Reporter& report) {
  at::Tensor tensor = at::empty(entry.shape, at::TensorOptions().dtype(entry.dtype->type));
  const uint64_t byte_size = entry.end - entry.begin;
  if (byte_size == 0) return tensor;

  auto* bytes = static_cast<unsigned char*>(tensor.data_ptr());
  source.read(data_start + entry.begin, byte_size, bytes);
  checksum = crc32c(bytes, byte_size, checksum);

  // PyTorch assumes every bool byte is 0 or 1, and other values give
  // undefined results in its kernels.
  if (entry.dtype->type == at::kBool) {
    const auto* bad = std::find_if(bytes, bytes + byte_size, [](unsigned char b) { return b > 1; });
    if (bad != bytes + byte_size) {
      report.fail("BOOL tensor '", entry.name, "' has the byte value ", static_cast<int>(*bad),
                  " at file byte offset ", data_start + entry.begin + (bad - bytes),
                  ", but BOOL bytes must be 0 or 1; ", kRewriteAdvice);
    }
  }
  return tensor;
}

SafetensorsContents read_safetensors(const ByteSource& source, const std::string& what,
                                     const SafetensorsReadOptions& options) {
  const Reporter report(what);
  const uint64_t header_length = read_header_length(source, report, options);
  const uint64_t data_start = kLengthFieldBytes + header_length;

  std::string header_text(header_length, '\0');
  source.read(kLengthFieldBytes, header_length, header_text.data());
  const Json header = parse_header_json(header_text, report);

  SafetensorsContents contents;
  std::vector<HeaderEntry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      contents.metadata = parse_metadata(value, report);
    } else {
      entries.push_back(parse_entry(key, value, report));
    }
  }
  check_layout(entries, data_start, source.size(), report);
  const ReservedMetadata reserved = take_reserved_metadata(contents.metadata, entries, report);

  uint32_t checksum = 0;
  std::map<std::string, at::Tensor> by_name;
  for (const HeaderEntry& entry : entries) {
    at::Tensor tensor = read_tensor(source, entry, data_start, checksum, report);
    by_name[entry.name] = tensor;
    contents.tensors.emplace_back(entry.name, tensor);
  }
  if (reserved.has_checksum && checksum != reserved.checksum) {
    report.fail("the file is damaged: the CRC-32C of its data section (file byte offsets ",
                data_start, " to ", source.size(), ") is ", format_checksum(checksum),
                ", but the header records ", format_checksum(reserved.checksum), " under '",
                kChecksumKey, "'; restore the file from a backup or write it again");
  }

  // Each alias goes right after its stored tensor and shares its TensorImpl.
  for (auto alias = reserved.aliases.rbegin(); alias != reserved.aliases.rend(); ++alias) {
    auto stored = std::find_if(contents.tensors.begin(), contents.tensors.end(),
                               [&](const auto& named) { return named.first == alias->second; });
    contents.tensors.emplace(std::next(stored), alias->first, by_name.at(alias->second));
  }
  return contents;
}

}  // namespace

std::string serialize_safetensors(const NamedTensors& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  const WritePlan plan = plan_write(tensors, metadata);
  uint64_t total = plan.length_and_header.size();
  for (const StoredTensor& tensor : plan.stored) total += tensor.byte_size;

  std::string bytes;
  bytes.reserve(total);
  bytes += plan.length_and_header;
  for (const StoredTensor& tensor : plan.stored) {
    bytes.append(static_cast<const char*>(tensor.data.data_ptr()), tensor.byte_size);
  }
  return bytes;
}

SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& what,
                                      const SafetensorsReadOptions& options) {
  return read_safetensors(StringSource(bytes), what, options);
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // The plan is built first, so that invalid input throws before any file
  // is touched.
  const WritePlan plan = plan_write(tensors, metadata);
  const std::string temporary = str_cat(path, ".tmp-", ::getpid());

  FileDescriptor fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    throw DataError(str_cat("failed to create '", temporary, "' to write safetensors file '", path,
                            "': ", std::strerror(errno), "; check that the folder exists and is "
                            "writable"));
  }
  try {
    write_all(fd.get(), plan.length_and_header.data(), plan.length_and_header.size(), temporary);
    for (const StoredTensor& tensor : plan.stored) {
      write_all(fd.get(), tensor.data.data_ptr(), tensor.byte_size, temporary);
    }
    // fsync before the rename, so that the name never points at a file
    // whose data are still only in the page cache.
    if (::fsync(fd.get()) != 0 || fd.close() != 0) {
      throw DataError(str_cat("failed to flush safetensors file '", temporary, "' to disk: ",
                              std::strerror(errno), "; check free disk space"));
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      throw DataError(str_cat("failed to rename '", temporary, "' to '", path, "': ",
                              std::strerror(errno)));
    }
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }

  // The rename is durable only once the folder's entry is on disk.
  std::string folder = std::filesystem::path(path).parent_path().string();
  if (folder.empty()) folder = ".";
  fsync_folder(folder, path);
}

SafetensorsContents load_safetensors(const std::string& path,
                                     const SafetensorsReadOptions& options) {
  return read_safetensors(FileSource(path), path, options);
}

}  // namespace imp
