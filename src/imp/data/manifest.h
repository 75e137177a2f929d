// File manifests: a CSV or JSON Lines file listing one sample per row, for
// data kept as loose files in a folder.
//
// Columns (CSV header names, or JSON keys) that the file datasets read:
//   image, video, audio   path of the sample's file for that modality,
//                         relative to the manifest's folder unless absolute
//   caption               the sample's text
//   label                 one class: a class name, or an integer index
//   labels                several classes: a JSON array, or in CSV one cell
//                         with the classes separated by ';'
// Other columns are kept and ignored. Empty cells count as absent.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace imp {

struct ManifestRow {
  int64_t line = 0;                           // 1-based line of the row in the file
  std::map<std::string, std::string> fields;  // column -> value, absent and empty cells left out
  std::vector<std::string> labels;            // the `labels` column split into classes
};

struct Manifest {
  std::string path;
  std::vector<ManifestRow> rows;
  // Rows that could not be parsed (a JSON line that is not an object, a CSV
  // row with more cells than the header): one complete message each. The
  // rows were skipped.
  std::vector<std::string> problems;
};

// Reads `path` as CSV (extension .csv: RFC 4180, a header row first, quoted
// cells may hold commas, quotes and line breaks) or JSON Lines (.jsonl or
// .json: one object per line, blank lines ignored). Text is made valid UTF-8
// (invalid bytes become U+FFFD). Throws DataError naming the file when it
// cannot be read, has an unknown extension, or is malformed as a whole (a
// CSV quote left open, a header with a repeated or empty column).
Manifest read_manifest(const std::string& path);

}  // namespace imp
