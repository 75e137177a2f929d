// Helpers for tests that run the imp executable as a real child process,
// as a user runs it.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../scratch_dir.h"
#include "imp/io/tar_shard.h"

namespace imp {
namespace testing {

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// Runs `imp ARGUMENTS`, behind `prefix` (e.g. an `env` command) when given.
inline Result run_imp(const std::string& arguments, const std::string& prefix = "") {
  const std::string command = prefix + IMP_CLI_PATH + " " + arguments + " 2>&1";
  Result result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return result;
}

inline std::string default_config() { return std::string(IMP_SOURCE_DIR) + "/configs/default.yaml"; }

// Tar shards of 16x16 PNGs in three colours, with captions and class names:
// <dir>/train-00000{0,1}.tar and <dir>/test-000000.tar. One training sample
// contains bytes that are no image, to be skipped.
inline void write_colour_shards(const std::filesystem::path& dir) {
  const std::vector<std::string> colours{"red", "green", "blue"};
  std::vector<std::string> pngs;
  for (const std::string& colour : colours) {
    const std::filesystem::path path = dir / (colour + ".png");
    ASSERT_EQ(std::system(("convert -size 16x16 xc:" + colour + " " + path.string()).c_str()), 0);
    std::ifstream in(path, std::ios::binary);
    pngs.emplace_back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  int key = 0;
  for (const char* name : {"train-000000.tar", "train-000001.tar", "test-000000.tar"}) {
    imp::ShardWriter writer((dir / name).string());
    for (int k = 0; k < 12; ++k, ++key) {
      const std::string stem = std::to_string(100000 + key);
      writer.add(stem + ".png", key == 5 ? std::string("not a picture") : pngs[k % 3]);
      writer.add(stem + ".txt", "a " + colours[k % 3] + " square");
      writer.add(stem + ".cls", colours[k % 3]);
    }
    writer.close();
  }
}

}  // namespace testing
}  // namespace imp
