// A fresh directory for one test's files, removed with them at scope exit
// unless the environment variable IMP_KEEP_SCRATCH is set (to look at a
// failed test's files).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace imp::testing {

class ScratchDir {
 public:
  // Creates <gtest temp dir>/<prefix>_XXXXXX with a unique suffix.
  explicit ScratchDir(const std::string& prefix = "imp") {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / (prefix + "_XXXXXX")).string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = pattern;
  }
  ~ScratchDir() {
    if (getenv("IMP_KEEP_SCRATCH") != nullptr) {
      std::printf("kept %s\n", path_.c_str());
      return;
    }
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }

 private:
  std::string path_;
};

}  // namespace imp::testing
