// WebDataset tar shards: an index built from the tar headers alone, random
// access to a member's bytes, a shard writer and expansion of brace patterns
// such as "train-{000000..000127}.tar" into shard lists.
//
// A shard is a POSIX tar file in which the files of one sample share a key
// and sit next to each other: 000123.jpg, 000123.txt, 000123.json. The reader
// handles these parts of the tar format: ustar (POSIX "ustar\0" "00" and GNU "ustar  \0" magic), old
// v7 headers without magic, GNU long names ('L') and long links ('K'), PAX
// extended headers ('x', with path= and size=, while global 'g' headers are
// skipped), octal and GNU base-256 size fields, and the ustar prefix field.
//
// Key rule (the one webdataset uses): for a member path "dir/000123.seg.JPG"
// the key is everything up to the first '.' of the last path component
// ("dir/000123") and the extension is the rest, lower-cased ("seg.jpg"). A
// leading "./" is removed from member paths first. A regular file has no key
// when the last component of its path has no '.', starts with '.' or has
// nothing after its first '.' ("README", ".hidden", "x."). Such files are
// skipped like directories, links and other non-regular entries.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace imp {

// A regular file in a shard. `offset` is where its data starts in the tar
// file and `size` is its length, both in bytes.
struct TarMember {
  std::string name;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// The members of one key, by lower-case extension ("jpg", "seg.png").
struct ShardSample {
  std::string key;
  std::map<std::string, TarMember> members;
};

// The samples of one shard and the problems met while scanning it.
struct ShardIndex {
  std::string path;

  // Samples in tar order. A sample missing a member (a key with a jpg but no
  // txt) is still listed, because the data pipeline decides what it needs.
  std::vector<ShardSample> samples;

  // A problem met while scanning. `reason` is short and stable, for counting:
  //   "shard: skipped entry"    a directory, link, device, GNU sparse file or
  //                             a regular file without a key. Only the entry
  //                             is skipped, and the samples around it stay.
  //   "shard: unsafe member path"  an absolute path or one with a ".."
  //                             component. The whole sample of that key is
  //                             dropped.
  //   "shard: duplicate member" two members of one key with the same
  //                             extension. The whole sample is dropped.
  //   "shard: truncated"        the file ends inside a header, a member's
  //                             data or its padding. The sample being read
  //                             is dropped (see `truncated`).
  //   "shard: corrupt header"   a header after the first one with a wrong
  //                             checksum, an invalid size field or malformed
  //                             PAX records. Scanning stops there and the
  //                             sample being read is dropped.
  // A dropped sample gets one problem, for the first thing wrong with it.
  // `message` is complete: it names the shard, the member and what happened.
  struct Problem {
    std::string reason, message;
  };
  std::vector<Problem> problems;

  // Scanning stopped before the end of the archive: the file ends inside a
  // header, a member's data or its padding, or a header is corrupt. A sample
  // is complete once a member with another key starts, so every sample before
  // the sample being read at that point is in `samples`. The sample being
  // read is dropped. A cut inside a member's data drops that member's sample.
  // A cut inside a header drops the sample before it, even if all of its
  // members so far are whole, because the cut may have removed more of them.
  // NOTE: a file cut exactly at a header boundary cannot be distinguished from
  // an archive without its two zero end blocks, which is accepted as a proper
  // end.
  bool truncated = false;
};

// Indexes the tar file at `path` by reading its headers only: one 512-byte
// pread per header, plus the data of GNU long-name and PAX headers. Member
// data is never read. Problems with single samples are recorded in the
// returned index (see ShardIndex::Problem).
//
// Throws DecodeError with reason
//   "shard: cannot open"     when the file is missing or unreadable,
//   "shard: read failed"     when reading a header fails,
//   "shard: not a tar file"  when its first header is not a tar header,
//   "shard: split sample"    when a key's files are not adjacent (key A, then
//                            B, then A again). That is an error for the whole
//                            shard rather than two half-samples.
ShardIndex index_shard(const std::string& path);

// Returns the bytes of `member` in the shard at `shard_path`. Thread-safe: each
// call opens the file and reads with pread. Throws DecodeError with reason
// "shard: cannot open" or "shard: read failed" (for a read error or a file
// that ends before the member does).
std::string read_member(const std::string& shard_path, const TarMember& member);

// Expands brace groups in a shard pattern, in order:
//   "train-{000000..000002}.tar" -> train-000000.tar, train-000001.tar, ...
//   "{a,b}-{1..2}"               -> a-1, a-2, b-1, b-2
//   "{a,b{1..2}}"                -> a, b1, b2 (groups nest)
// A numeric range keeps the width of its first bound's zero padding ("{08..10}"
// gives 08, 09, 10, while "{8..10}" gives 8, 9, 10) and counts down when the
// first bound is larger. A group without a comma or ".." is expanded to its
// contents ("{a}" -> a). A pattern without braces is returned as is.
// Throws ConfigError naming the pattern on unbalanced braces, an empty group
// "{}" or a bad range (bounds that are not decimal numbers, or a step).
std::vector<std::string> expand_braces(const std::string& pattern);

// Writes a tar shard that GNU tar, Python's tarfile and index_shard read. Each
// member gets a ustar header (mode 0644, owner 0, the writer's creation time)
// and its data padded to 512 bytes. A PAX extended header with the path comes
// first when the name is longer than 100 bytes or not ASCII. Two zero blocks
// end the archive.
// The shard is written to "<path>.tmp", which close() fsyncs and renames to
// `path`, so a reader never sees a half-written shard under the final name.
// Write failures throw DataError naming the file.
class ShardWriter {
 public:
  // Creates "<path>.tmp", replacing any file of that name.
  explicit ShardWriter(std::string path);

  // Removes the temporary file if close() was not called.
  ~ShardWriter();

  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends a member. Throws DataError when `name` is empty, absolute, has an
  // empty, "." or ".." component, or contains a NUL byte, and std::logic_error
  // after close().
  void add(const std::string& name, const std::string& data);

  // Writes the end-of-archive blocks, fsyncs and renames the file to its final
  // name. Calling it again does nothing.
  void close();

  // Bytes written so far, headers and padding included.
  uint64_t bytes_written() const;

 private:
  void write_all(const char* data, size_t size);
  void write_header(const std::string& name, uint64_t size, char typeflag);

  std::string path_;
  std::string temporary_path_;
  int fd_ = -1;
  bool closed_ = false;
  int64_t mtime_ = 0;
  uint64_t bytes_written_ = 0;
};

}  // namespace imp
