// The `imp data` commands: inspect a data set before training on it, and pack
// a folder of files listed in a manifest into WebDataset tar shards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace imp {

// Reads every sample of `paths` and decodes each of its image, video and
// audio files. A path is a tar shard or brace pattern, or a manifest
// (.csv, .jsonl); its extension decides which. Returns one JSON
// object: the sources, the number of samples, per modality the count, the
// failures and the range of sizes (pixels, frames, seconds), how many
// samples have captions and labels, the classes, the failures per reason
// and a few example samples. Throws DataError when a path cannot be read
// at all.
nlohmann::json inspect_data(const std::vector<std::string>& paths, int max_examples = 3);

// A short human-readable report of an inspect_data result.
std::string format_inspection(const nlohmann::json& report);

struct MakeShardsOptions {
  std::string manifest;          // .csv or .jsonl (see data/manifest.h)
  std::string out_dir;
  std::string prefix = "shard";  // shards are <out_dir>/<prefix>-000000.tar, ...
  int64_t samples_per_shard = 1000;
};

struct MakeShardsResult {
  std::vector<std::string> shards;    // written, in order
  int64_t samples = 0;                // written
  int64_t skipped = 0;                // rows whose files could not be read
  std::vector<std::string> problems;  // one message per skipped row (the first 20)
  std::string pattern;                // a brace pattern naming every shard
};

// Packs the manifest's rows into tar shards: per sample a key "000123", its
// files as 000123.<ext> (the extension of the source file, lower case), the
// caption as 000123.txt, the label as 000123.cls, and every manifest field as
// 000123.json. A row whose file is missing is skipped and reported. Each
// shard is written to a temporary name and renamed when complete.
MakeShardsResult make_shards(const MakeShardsOptions& options);

}  // namespace imp
