// Tests for the WebDataset tar shard reader, writer and brace expansion.
// Shards come from GNU tar (gnu, pax and ustar formats), from ShardWriter, and
// from header bytes built here, for cases no tool writes on request.
#include "imp/io/tar_shard.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "imp/core/error.h"
#include "imp/io/decode_error.h"
#include "../scratch_dir.h"

namespace {

using imp::DecodeError;
using imp::ShardIndex;
using imp::ShardSample;
using imp::ShardWriter;
using imp::TarMember;
using imp::testing::ScratchDir;
namespace fs = std::filesystem;

void write_file(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs a shell command and returns its standard output. Fails the test when
// the command exits with a non-zero status.
std::string run(const std::string& command) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen failed for: " << command;
    return output;
  }
  char buffer[4096];
  size_t count = 0;
  while ((count = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, count);
  const int status = pclose(pipe);
  EXPECT_EQ(status, 0) << "command failed: " << command;
  return output;
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// The content each test member gets, so that reads can be checked.
std::string content_of(const std::string& name) { return "content of " + name + "\n"; }

// Writes `names` (relative paths) under <dir>/src with content_of(name) and
// archives them with GNU tar in `format`, in the given order.
std::string make_gnu_tar(const ScratchDir& dir, const std::string& format, const std::vector<std::string>& names,
                         const std::string& tar_name = "shard.tar") {
  std::string command = "tar --format=" + format + " -cf " + shell_quote(dir.file(tar_name)) + " -C " +
                        shell_quote(dir.file("src")) + " --";
  for (const std::string& name : names) {
    write_file(dir.file("src/" + name), content_of(name));
    command += " " + shell_quote(name);
  }
  run(command);
  return dir.file(tar_name);
}

// The three-sample shard most tests start from.
const std::vector<std::string> kThreeSamples = {"000000.jpg", "000000.txt", "000000.json",
                                                "000001.jpg", "000001.txt", "000001.json",
                                                "000002.jpg", "000002.txt", "000002.json"};

std::set<std::string> extensions(const ShardSample& sample) {
  std::set<std::string> result;
  for (const auto& entry : sample.members) result.insert(entry.first);
  return result;
}

std::vector<std::string> keys(const ShardIndex& index) {
  std::vector<std::string> result;
  for (const ShardSample& sample : index.samples) result.push_back(sample.key);
  return result;
}

std::vector<std::string> reasons(const ShardIndex& index) {
  std::vector<std::string> result;
  for (const ShardIndex::Problem& problem : index.problems) result.push_back(problem.reason);
  return result;
}

// Returns the reason of the DecodeError that `action` throws, or "" if none.
template <typename Action>
std::string decode_error_reason(Action action) {
  try {
    action();
  } catch (const DecodeError& error) {
    return error.reason();
  }
  return "";
}

// ---------------------------------------------------------------------------
// Hand-made tar bytes, written independently of ShardWriter.

struct HeaderOptions {
  char typeflag = '0';
  bool ustar_magic = true;       // false: an old v7 header without magic.
  bool signed_checksum = false;  // Sum the bytes as signed chars.
  std::string raw_size_field;    // 12 bytes that replace the octal size field.
};

void put_octal(std::string& header, size_t offset, size_t length, uint64_t value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%0*llo", static_cast<int>(length - 1), static_cast<unsigned long long>(value));
  header.replace(offset, length - 1, text, length - 1);
}

std::string tar_header(const std::string& name, uint64_t size, const HeaderOptions& options = {}) {
  std::string header(512, '\0');
  header.replace(0, name.size(), name);
  put_octal(header, 100, 8, 0644);
  put_octal(header, 108, 8, 0);
  put_octal(header, 116, 8, 0);
  put_octal(header, 124, 12, size);
  if (!options.raw_size_field.empty()) header.replace(124, 12, options.raw_size_field);
  put_octal(header, 136, 12, 1700000000);
  header[156] = options.typeflag;
  if (options.ustar_magic) header.replace(257, 8, std::string("ustar\0" "00", 8));

  header.replace(148, 8, "        ");
  long long sum = 0;
  for (char c : header) sum += options.signed_checksum ? static_cast<signed char>(c) : static_cast<unsigned char>(c);
  put_octal(header, 148, 7, static_cast<uint64_t>(sum));
  return header;
}

std::string padding_for(size_t size) { return std::string((512 - size % 512) % 512, '\0'); }

// A regular member: header, data and padding.
std::string tar_member(const std::string& name, const std::string& data, const HeaderOptions& options = {}) {
  return tar_header(name, data.size(), options) + data + padding_for(data.size());
}

const std::string kEndBlocks(1024, '\0');

// A GNU base-256 size field: 0x80, then the value big-endian.
std::string base256_size(uint64_t value) {
  std::string field(12, '\0');
  field[0] = static_cast<char>(0x80);
  for (int i = 11; i > 0; --i) {
    field[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return field;
}

// ---------------------------------------------------------------------------
// Reading shards written by GNU tar

TEST(TarShard, IndexesGnuTarShard) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_gnu_tar(dir, "gnu", kThreeSamples);
  const ShardIndex index = imp::index_shard(shard);

  EXPECT_EQ(index.path, shard);
  EXPECT_FALSE(index.truncated);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{"000000", "000001", "000002"}));
  for (const ShardSample& sample : index.samples) {
    EXPECT_EQ(extensions(sample), (std::set<std::string>{"jpg", "txt", "json"}));
  }

  // Each member is one header and one block of data: 1024 bytes apart.
  const TarMember& first = index.samples[0].members.at("jpg");
  EXPECT_EQ(first.name, "000000.jpg");
  EXPECT_EQ(first.offset, 512u);
  EXPECT_EQ(first.size, content_of("000000.jpg").size());
  EXPECT_EQ(index.samples[0].members.at("txt").offset, 512u + 1024u);
  EXPECT_EQ(index.samples[2].members.at("json").offset, 512u + 8 * 1024u);

  for (const ShardSample& sample : index.samples) {
    for (const auto& entry : sample.members) {
      EXPECT_EQ(imp::read_member(shard, entry.second), content_of(entry.second.name));
    }
  }
}

TEST(TarShard, IndexesPaxAndUstarFormats) {
  for (const std::string format : {"pax", "ustar"}) {
    SCOPED_TRACE(format);
    ScratchDir dir("tar_shard");
    const std::string shard = make_gnu_tar(dir, format, kThreeSamples);
    const ShardIndex index = imp::index_shard(shard);

    EXPECT_FALSE(index.truncated);
    EXPECT_TRUE(index.problems.empty());
    ASSERT_EQ(keys(index), (std::vector<std::string>{"000000", "000001", "000002"}));
    for (const ShardSample& sample : index.samples) {
      ASSERT_EQ(extensions(sample), (std::set<std::string>{"jpg", "txt", "json"}));
      for (const auto& entry : sample.members) {
        EXPECT_EQ(entry.second.name, sample.key + "." + entry.first);
        EXPECT_EQ(imp::read_member(shard, entry.second), content_of(entry.second.name));
      }
    }
  }
}

TEST(TarShard, LongNameInGnuFormat) {
  ScratchDir dir("tar_shard");
  const std::string long_key = "long/" + std::string(150, 'n');
  const std::string shard = make_gnu_tar(dir, "gnu", {long_key + ".jpg", long_key + ".txt", "short.txt"});

  // GNU tar stores the name in a separate 'L' entry before the member.
  const std::string bytes = read_file(shard);
  ASSERT_EQ(bytes[156], 'L');

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{long_key, "short"}));
  const TarMember& jpg = index.samples[0].members.at("jpg");
  EXPECT_EQ(jpg.name, long_key + ".jpg");
  EXPECT_EQ(imp::read_member(shard, jpg), content_of(long_key + ".jpg"));
  EXPECT_EQ(imp::read_member(shard, index.samples[0].members.at("txt")), content_of(long_key + ".txt"));
}

TEST(TarShard, LongNameInPaxFormat) {
  ScratchDir dir("tar_shard");
  const std::string long_key = "long/" + std::string(150, 'p');
  const std::string shard = make_gnu_tar(dir, "pax", {long_key + ".jpg", "short.txt"});

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{long_key, "short"}));
  const TarMember& jpg = index.samples[0].members.at("jpg");
  EXPECT_EQ(jpg.name, long_key + ".jpg");
  EXPECT_EQ(imp::read_member(shard, jpg), content_of(long_key + ".jpg"));
}

TEST(TarShard, UstarPrefixJoinsName) {
  ScratchDir dir("tar_shard");
  const std::string folder = std::string(60, 'a') + "/" + std::string(60, 'b');
  const std::string shard = make_gnu_tar(dir, "ustar", {folder + "/000001.txt"});

  // The 132-byte path does not fit the name field, so GNU tar puts the
  // folders in the prefix field at byte 345.
  const std::string bytes = read_file(shard);
  ASSERT_EQ(bytes.substr(345, 121), folder);

  const ShardIndex index = imp::index_shard(shard);
  ASSERT_EQ(keys(index), std::vector<std::string>{folder + "/000001"});
  const TarMember& txt = index.samples[0].members.at("txt");
  EXPECT_EQ(txt.name, folder + "/000001.txt");
  EXPECT_EQ(imp::read_member(shard, txt), content_of(folder + "/000001.txt"));
}

TEST(TarShard, KeySplitsAtFirstDot) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_gnu_tar(dir, "gnu", {"a/b/x.y.JPG", "a/b/x.txt", "./c.d/e.Seg.PNG"});
  const ShardIndex index = imp::index_shard(shard);

  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{"a/b/x", "c.d/e"}));
  EXPECT_EQ(extensions(index.samples[0]), (std::set<std::string>{"y.jpg", "txt"}));
  EXPECT_EQ(index.samples[0].members.at("y.jpg").name, "a/b/x.y.JPG");
  // The "./" prefix is gone from the name and the key.
  ASSERT_EQ(extensions(index.samples[1]), std::set<std::string>{"seg.png"});
  EXPECT_EQ(index.samples[1].members.at("seg.png").name, "c.d/e.Seg.PNG");
  EXPECT_EQ(imp::read_member(shard, index.samples[1].members.at("seg.png")), content_of("./c.d/e.Seg.PNG"));
}

TEST(TarShard, SkipsEntriesWithoutKey) {
  ScratchDir dir("tar_shard");
  write_file(dir.file("src/folder/000001.jpg"), content_of("folder/000001.jpg"));
  write_file(dir.file("src/README"), "no extension\n");
  write_file(dir.file("src/.hidden"), "no key\n");
  fs::create_symlink("folder/000001.jpg", dir.file("src/000002.jpg"));
  const std::string shard = dir.file("shard.tar");
  // The folder goes in as a directory entry followed by its file.
  run("tar --format=gnu -cf " + shell_quote(shard) + " -C " + shell_quote(dir.file("src")) +
      " folder README .hidden 000002.jpg");

  const ShardIndex index = imp::index_shard(shard);
  ASSERT_EQ(keys(index), std::vector<std::string>{"folder/000001"});
  EXPECT_FALSE(index.truncated);
  EXPECT_EQ(reasons(index), std::vector<std::string>(4, "shard: skipped entry"));
  ASSERT_EQ(index.problems.size(), 4u);
  EXPECT_NE(index.problems[0].message.find("\"folder/\""), std::string::npos) << index.problems[0].message;
  EXPECT_NE(index.problems[0].message.find("a directory"), std::string::npos) << index.problems[0].message;
  EXPECT_NE(index.problems[0].message.find(shard), std::string::npos) << index.problems[0].message;
  EXPECT_NE(index.problems[1].message.find("\"README\""), std::string::npos) << index.problems[1].message;
  EXPECT_NE(index.problems[2].message.find("\".hidden\""), std::string::npos) << index.problems[2].message;
  EXPECT_NE(index.problems[3].message.find("a symbolic link"), std::string::npos) << index.problems[3].message;
}

TEST(TarShard, SampleMissingMemberIsKept) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_gnu_tar(dir, "gnu", {"000000.jpg", "000000.txt", "000001.jpg", "000002.txt"});
  const ShardIndex index = imp::index_shard(shard);

  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{"000000", "000001", "000002"}));
  EXPECT_EQ(extensions(index.samples[1]), std::set<std::string>{"jpg"});
  EXPECT_EQ(extensions(index.samples[2]), std::set<std::string>{"txt"});
}

TEST(TarShard, SplitSampleThrows) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_gnu_tar(dir, "gnu", {"a.jpg", "b.jpg", "a.txt"});
  try {
    imp::index_shard(shard);
    FAIL() << "index_shard accepted a split sample";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "shard: split sample");
    EXPECT_NE(std::string(error.what()).find("\"a.txt\""), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find(shard), std::string::npos) << error.what();
  }
}

TEST(TarShard, EmptyArchiveHasNoSamples) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("empty.tar");
  run("tar --format=gnu -cf " + shell_quote(shard) + " -T /dev/null");
  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.samples.empty());
  EXPECT_TRUE(index.problems.empty());
  EXPECT_FALSE(index.truncated);
}

// ---------------------------------------------------------------------------
// Truncated and corrupt shards

// A shard of three samples whose jpg members are 3000 bytes, so that a cut
// can fall inside their data.
std::string make_big_member_shard(const ScratchDir& dir) {
  ShardWriter writer(dir.file("shard.tar"));
  for (const std::string key : {"000000", "000001", "000002"}) {
    writer.add(key + ".txt", content_of(key + ".txt"));
    writer.add(key + ".jpg", std::string(3000, key.back()));
  }
  writer.close();
  return dir.file("shard.tar");
}

TEST(TarShard, CutInsideLastMemberData) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_big_member_shard(dir);
  const ShardIndex whole = imp::index_shard(shard);
  ASSERT_EQ(whole.samples.size(), 3u);
  const TarMember last = whole.samples[2].members.at("jpg");

  fs::resize_file(shard, last.offset + 1000);
  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.truncated);
  ASSERT_EQ(keys(index), (std::vector<std::string>{"000000", "000001"}));
  EXPECT_EQ(imp::read_member(shard, index.samples[1].members.at("jpg")), std::string(3000, '1'));
  ASSERT_EQ(reasons(index), std::vector<std::string>{"shard: truncated"});
  const std::string& message = index.problems[0].message;
  EXPECT_NE(message.find("\"000002.jpg\""), std::string::npos) << message;
  EXPECT_NE(message.find("sample \"000002\" was dropped"), std::string::npos) << message;

  // The member that was cut cannot be read either.
  try {
    imp::read_member(shard, last);
    FAIL() << "read_member read past the end of the file";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "shard: read failed");
  }
}

TEST(TarShard, CutInsideHeaderDropsSampleInProgress) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_big_member_shard(dir);
  const ShardIndex whole = imp::index_shard(shard);
  ASSERT_EQ(whole.samples.size(), 3u);

  // Cut 100 bytes into the header of 000002.txt. Sample 000001 looks whole,
  // but the reader cannot know that no member of it followed, so it is
  // dropped too.
  const uint64_t third_header = whole.samples[2].members.at("txt").offset - 512;
  fs::resize_file(shard, third_header + 100);
  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.truncated);
  EXPECT_EQ(keys(index), std::vector<std::string>{"000000"});
  ASSERT_EQ(reasons(index), std::vector<std::string>{"shard: truncated"});
  EXPECT_NE(index.problems[0].message.find("sample \"000001\" was dropped"), std::string::npos)
      << index.problems[0].message;
}

TEST(TarShard, EndAtBlockBoundaryIsAccepted) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_big_member_shard(dir);
  const ShardIndex whole = imp::index_shard(shard);
  const TarMember last = whole.samples[2].members.at("jpg");

  // Without the end-of-archive blocks, but with the last member's padding.
  fs::resize_file(shard, last.offset + 3072);
  const ShardIndex index = imp::index_shard(shard);
  EXPECT_FALSE(index.truncated);
  EXPECT_TRUE(index.problems.empty());
  EXPECT_EQ(keys(index), (std::vector<std::string>{"000000", "000001", "000002"}));

  // A cut inside that padding is a cut.
  fs::resize_file(shard, last.offset + 3000);
  const ShardIndex cut = imp::index_shard(shard);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(keys(cut), (std::vector<std::string>{"000000", "000001"}));
  // The message gives where the cut is and how long the file is, rather than
  // naming a header offset past its end.
  ASSERT_FALSE(cut.problems.empty());
  const std::string& message = cut.problems.back().message;
  EXPECT_NE(message.find("inside the padding after a member, 72 bytes before the next header"),
            std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(last.offset + 3000) + " bytes"), std::string::npos) << message;
}

TEST(TarShard, CorruptHeaderStopsScan) {
  ScratchDir dir("tar_shard");
  const std::string shard = make_big_member_shard(dir);
  const ShardIndex whole = imp::index_shard(shard);
  const uint64_t third_header = whole.samples[2].members.at("txt").offset - 512;

  std::string bytes = read_file(shard);
  bytes[third_header + 3] = 'X';  // In the name field, so only the checksum detects it.
  write_file(shard, bytes);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.truncated);
  EXPECT_EQ(keys(index), std::vector<std::string>{"000000"});
  ASSERT_EQ(reasons(index), std::vector<std::string>{"shard: corrupt header"});
  EXPECT_NE(index.problems[0].message.find("checksum"), std::string::npos) << index.problems[0].message;
  EXPECT_NE(index.problems[0].message.find(std::to_string(third_header)), std::string::npos)
      << index.problems[0].message;
}

TEST(TarShard, RejectsFilesThatAreNotTar) {
  ScratchDir dir("tar_shard");
  EXPECT_EQ(decode_error_reason([&] { imp::index_shard(dir.file("missing.tar")); }), "shard: cannot open");

  write_file(dir.file("text.tar"), std::string(2000, 'x'));
  EXPECT_EQ(decode_error_reason([&] { imp::index_shard(dir.file("text.tar")); }), "shard: not a tar file");

  write_file(dir.file("short.tar"), "tiny");
  EXPECT_EQ(decode_error_reason([&] { imp::index_shard(dir.file("short.tar")); }), "shard: not a tar file");

  write_file(dir.file("empty.tar"), "");
  EXPECT_EQ(decode_error_reason([&] { imp::index_shard(dir.file("empty.tar")); }), "shard: not a tar file");

  EXPECT_EQ(decode_error_reason([&] { imp::read_member(dir.file("missing.tar"), TarMember{"a.jpg", 512, 4}); }),
            "shard: cannot open");
}

// ---------------------------------------------------------------------------
// Hand-made headers

TEST(TarShard, RejectsUnsafeMemberPaths) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  write_file(shard, tar_member("a.jpg", "A") + tar_member("../x.txt", "X") + tar_member("../x.jpg", "X") +
                        tar_member("b.jpg", "B") + tar_member("/abs/c.txt", "C") + tar_member("d/../e.txt", "E") +
                        tar_member("f.txt", "F") + kEndBlocks);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_FALSE(index.truncated);
  ASSERT_EQ(keys(index), (std::vector<std::string>{"a", "b", "f"}));
  EXPECT_EQ(imp::read_member(shard, index.samples[1].members.at("jpg")), "B");
  // One problem per rejected sample: "../x" (two members), "/abs/c", "d/../e".
  EXPECT_EQ(reasons(index), std::vector<std::string>(3, "shard: unsafe member path"));
  ASSERT_EQ(index.problems.size(), 3u);
  EXPECT_NE(index.problems[0].message.find("\"../x.txt\""), std::string::npos) << index.problems[0].message;
}

TEST(TarShard, DuplicateExtensionDropsSample) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  write_file(shard, tar_member("a.jpg", "1") + tar_member("a.JPG", "2") + tar_member("a.txt", "3") +
                        tar_member("b.jpg", "4") + kEndBlocks);

  const ShardIndex index = imp::index_shard(shard);
  ASSERT_EQ(keys(index), std::vector<std::string>{"b"});
  ASSERT_EQ(reasons(index), std::vector<std::string>{"shard: duplicate member"});
  EXPECT_NE(index.problems[0].message.find("\"a.JPG\""), std::string::npos) << index.problems[0].message;
  EXPECT_NE(index.problems[0].message.find("\"a.jpg\""), std::string::npos) << index.problems[0].message;
}

TEST(TarShard, Base256SizeField) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  const std::string data(1000, 'z');
  HeaderOptions options;
  options.raw_size_field = base256_size(data.size());
  write_file(shard, tar_header("big.bin", 0, options) + data + padding_for(data.size()) + tar_member("c.txt", "C") +
                        kEndBlocks);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{"big", "c"}));
  const TarMember& big = index.samples[0].members.at("bin");
  EXPECT_EQ(big.size, 1000u);
  EXPECT_EQ(imp::read_member(shard, big), data);
  EXPECT_EQ(imp::read_member(shard, index.samples[1].members.at("txt")), "C");
}

TEST(TarShard, Base256SizeBeyondOctalRange) {
  // 8 GiB + 5 bytes does not fit 11 octal digits. The data is not in the
  // file, so the member reads as cut, and the message shows the parsed size.
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  HeaderOptions options;
  options.raw_size_field = base256_size((uint64_t{1} << 33) + 5);
  write_file(shard, tar_member("a.txt", "A") + tar_header("huge.bin", 0, options) + std::string(512, 'h'));

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.truncated);
  EXPECT_EQ(keys(index), std::vector<std::string>{"a"});
  ASSERT_EQ(reasons(index), std::vector<std::string>{"shard: truncated"});
  EXPECT_NE(index.problems[0].message.find("8589934597 bytes"), std::string::npos) << index.problems[0].message;
}

TEST(TarShard, AcceptsSignedChecksumAndV7Headers) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  HeaderOptions signed_sum;
  signed_sum.signed_checksum = true;
  HeaderOptions v7;
  v7.ustar_magic = false;
  v7.typeflag = '\0';
  // "\xc3\xa9" is a UTF-8 e-acute: its bytes sum differently as signed chars.
  write_file(shard, tar_member("caf\xc3\xa9.txt", "signed", signed_sum) + tar_member("old.txt", "v7", v7) +
                        kEndBlocks);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), (std::vector<std::string>{"caf\xc3\xa9", "old"}));
  EXPECT_EQ(imp::read_member(shard, index.samples[0].members.at("txt")), "signed");
  EXPECT_EQ(imp::read_member(shard, index.samples[1].members.at("txt")), "v7");
}

TEST(TarShard, PaxSizeAndGlobalHeaders) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("shard.tar");
  // A global header (skipped), then a PAX header whose size and path replace
  // the ustar fields of the member after it.
  const std::string global_records = "18 comment=global\n";
  const std::string records = "10 size=5\n" "22 path=real.name.TXT\n";
  HeaderOptions global;
  global.typeflag = 'g';
  HeaderOptions extended;
  extended.typeflag = 'x';
  write_file(shard, tar_member("pax_global_header", global_records, global) +
                        tar_member("PaxHeaders/x", records, extended) + tar_header("fallback", 0) + "hello" +
                        padding_for(5) + kEndBlocks);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  ASSERT_EQ(keys(index), std::vector<std::string>{"real"});
  const TarMember& member = index.samples[0].members.at("name.txt");
  EXPECT_EQ(member.name, "real.name.TXT");
  EXPECT_EQ(member.size, 5u);
  EXPECT_EQ(imp::read_member(shard, member), "hello");
}

// ---------------------------------------------------------------------------
// ShardWriter

TEST(ShardWriter, RoundTripWithGnuTar) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("out.tar");
  const std::string long_name = "dir/" + std::string(142, 'w') + ".txt";  // 150 bytes.
  const std::vector<std::pair<std::string, std::string>> members = {
      {"000000.jpg", std::string(700, 'j')},
      {"000000.txt", "a caption"},
      {"000001.json", "{}"},
      {"000001.txt", ""},
      {long_name, "long name content"},
      {"caf\xc3\xa9.txt", "non-ASCII name"},
  };
  ShardWriter writer(shard);
  for (const auto& member : members) writer.add(member.first, member.second);
  EXPECT_TRUE(fs::exists(shard + ".tmp"));
  EXPECT_FALSE(fs::exists(shard));
  writer.close();
  EXPECT_FALSE(fs::exists(shard + ".tmp"));
  ASSERT_TRUE(fs::exists(shard));
  EXPECT_EQ(writer.bytes_written(), fs::file_size(shard));
  EXPECT_EQ(fs::file_size(shard) % 512, 0u);

  const ShardIndex index = imp::index_shard(shard);
  EXPECT_TRUE(index.problems.empty());
  EXPECT_FALSE(index.truncated);
  ASSERT_EQ(keys(index), (std::vector<std::string>{"000000", "000001", long_name.substr(0, 150 - 4), "caf\xc3\xa9"}));
  std::vector<std::pair<std::string, std::string>> read_back;
  for (const ShardSample& sample : index.samples) {
    for (const auto& entry : sample.members) {
      read_back.emplace_back(entry.second.name, imp::read_member(shard, entry.second));
    }
  }
  // Members were added in extension order, the order of ShardSample::members.
  EXPECT_EQ(read_back, members);

  // GNU tar agrees on names and contents.
  const std::string listing = run("tar --quoting-style=literal -tf " + shell_quote(shard));
  std::string expected_listing;
  for (const auto& member : members) expected_listing += member.first + "\n";
  EXPECT_EQ(listing, expected_listing);
  for (const auto& member : members) {
    EXPECT_EQ(run("tar -xOf " + shell_quote(shard) + " " + shell_quote(member.first)), member.second)
        << member.first;
  }
}

TEST(ShardWriter, DestroyedWithoutCloseRemovesFile) {
  ScratchDir dir("tar_shard");
  const std::string shard = dir.file("out.tar");
  {
    ShardWriter writer(shard);
    writer.add("000000.txt", "unfinished");
    EXPECT_EQ(writer.bytes_written(), 1024u);
    EXPECT_TRUE(fs::exists(shard + ".tmp"));
  }
  EXPECT_FALSE(fs::exists(shard + ".tmp"));
  EXPECT_FALSE(fs::exists(shard));
}

TEST(ShardWriter, RejectsUnsafeNames) {
  ScratchDir dir("tar_shard");
  ShardWriter writer(dir.file("out.tar"));
  for (const std::string name : {"", "/abs.txt", "../x.txt", "a/../b.txt", "a//b.txt", "./a.txt", "a/"}) {
    EXPECT_THROW(writer.add(name, "data"), imp::DataError) << "name: " << name;
  }
  EXPECT_EQ(writer.bytes_written(), 0u);
  writer.close();
  EXPECT_THROW(writer.add("late.txt", "data"), std::logic_error);
}

// ---------------------------------------------------------------------------
// Brace expansion

using Names = std::vector<std::string>;

TEST(ExpandBraces, PaddedRange) {
  EXPECT_EQ(imp::expand_braces("shards/train-{000..003}.tar"),
            (Names{"shards/train-000.tar", "shards/train-001.tar", "shards/train-002.tar", "shards/train-003.tar"}));
  EXPECT_EQ(imp::expand_braces("{08..11}"), (Names{"08", "09", "10", "11"}));
  EXPECT_EQ(imp::expand_braces("{8..11}"), (Names{"8", "9", "10", "11"}));
  EXPECT_EQ(imp::expand_braces("{3..1}"), (Names{"3", "2", "1"}));
  EXPECT_EQ(imp::expand_braces("{5..5}"), Names{"5"});
  EXPECT_EQ(imp::expand_braces("train-{000000..000127}.tar").size(), 128u);
  EXPECT_EQ(imp::expand_braces("train-{000000..000127}.tar").back(), "train-000127.tar");
}

TEST(ExpandBraces, ListsAndNesting) {
  EXPECT_EQ(imp::expand_braces("{a,b,c}.tar"), (Names{"a.tar", "b.tar", "c.tar"}));
  EXPECT_EQ(imp::expand_braces("{a,b{1..2}}"), (Names{"a", "b1", "b2"}));
  EXPECT_EQ(imp::expand_braces("{a,}x"), (Names{"ax", "x"}));
  EXPECT_EQ(imp::expand_braces("{a}"), Names{"a"});
}

TEST(ExpandBraces, TwoGroupsInOrder) {
  EXPECT_EQ(imp::expand_braces("{x,y}/part-{0..1}.tar"),
            (Names{"x/part-0.tar", "x/part-1.tar", "y/part-0.tar", "y/part-1.tar"}));
}

TEST(ExpandBraces, NoBracesReturnedAsIs) {
  EXPECT_EQ(imp::expand_braces("shards/train-000.tar"), Names{"shards/train-000.tar"});
  EXPECT_EQ(imp::expand_braces(""), Names{""});
}

TEST(ExpandBraces, ErrorsNamePattern) {
  for (const std::string pattern : {"train-{000..003.tar", "train-000}.tar", "{a,b}}", "{}", "{a..c}", "{1..}",
                                    "{1..5..2}", "{x{1..2}"}) {
    try {
      imp::expand_braces(pattern);
      ADD_FAILURE() << "no error for " << pattern;
    } catch (const imp::ConfigError& error) {
      EXPECT_NE(std::string(error.what()).find("\"" + pattern + "\""), std::string::npos) << error.what();
    }
  }
}

}  // namespace
