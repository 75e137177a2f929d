// Helpers for tests that run the imp executable as a real child process,
// as a user runs it.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../scratch_dir.h"
#include "imp/io/tar_shard.h"

extern char** environ;

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

// The whole content of a file.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The records of a JSON Lines file.
inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  return records;
}

// Starts `imp ARGUMENTS` with `extra` ("NAME=value" entries) added to the
// environment and its output in `log`. Returns its process id, or -1.
inline pid_t spawn_imp(const std::vector<std::string>& arguments, const std::vector<std::string>& extra,
                       const std::filesystem::path& log) {
  std::vector<std::string> all{IMP_CLI_PATH};
  all.insert(all.end(), arguments.begin(), arguments.end());
  std::vector<char*> argv;
  for (std::string& argument : all) argv.push_back(argument.data());
  argv.push_back(nullptr);
  std::vector<std::string> variables(extra);
  for (char** entry = environ; *entry != nullptr; ++entry) variables.emplace_back(*entry);
  std::vector<char*> envp;
  for (std::string& variable : variables) envp.push_back(variable.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  const int status = posix_spawn(&pid, IMP_CLI_PATH, &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  return status == 0 ? pid : -1;
}

}  // namespace testing
}  // namespace imp
