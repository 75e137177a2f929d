// The commit a benchmark's numbers belong to, printed with them.
#pragma once

#include <cstdio>
#include <string>

#ifndef IMP_GIT_COMMIT
#define IMP_GIT_COMMIT "unknown"
#endif

// The source tree's commit now, with "-dirty" for uncommitted changes. The
// value CMake recorded at configure time goes stale in incremental builds,
// so it is only the fallback when git cannot be run.
inline std::string source_commit() {
  const std::string git = std::string("git -C '") + IMP_SOURCE_DIR + "' ";
  auto read = [](const std::string& command) {
    std::string out;
    if (FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r")) {
      char buffer[128];
      while (fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
      if (pclose(pipe) != 0) out.clear();
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  };
  std::string commit = read(git + "rev-parse --short HEAD");
  if (commit.empty()) return IMP_GIT_COMMIT;
  if (!read(git + "status --porcelain --untracked-files=no").empty()) commit += "-dirty";
  return commit;
}

