#include "imp/data/manifest.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "imp/core/error.h"
#include "imp/core/utf8.h"

namespace imp {
namespace {

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::vector<std::string> split_labels(const std::string& cell) {
  std::vector<std::string> labels;
  std::stringstream stream(cell);
  std::string part;
  while (std::getline(stream, part, ';')) {
    part = trim(part);
    if (!part.empty()) labels.push_back(part);
  }
  return labels;
}

// Moves `value` into the row: `labels` is split, other columns kept as text.
void set_field(ManifestRow& row, const std::string& column, std::string value) {
  if (value.empty()) return;
  if (column == "labels") {
    row.labels = split_labels(value);
  } else {
    row.fields[column] = std::move(value);
  }
}

// One CSV record per call: cells split on commas outside quotes, "" inside
// quotes is one quote, a record ends at a line break outside quotes.
class CsvReader {
 public:
  CsvReader(const std::string& text, const std::string& path) : text_(text), path_(path) {
    // A UTF-8 byte order mark, as spreadsheet programs write it.
    if (text_.compare(0, 3, "\xEF\xBB\xBF") == 0) pos_ = 3;
  }

  // False at the end of the text. `line` gets the record's first line.
  bool next(std::vector<std::string>& cells, int64_t& line) {
    cells.clear();
    if (pos_ >= text_.size()) return false;
    line = line_;
    std::string cell;
    bool quoted = false, cell_was_quoted = false;
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (quoted) {
        if (c == '"') {
          if (pos_ < text_.size() && text_[pos_] == '"') {
            cell += '"';
            ++pos_;
          } else {
            quoted = false;
          }
        } else {
          if (c == '\n') ++line_;
          cell += c;
        }
        continue;
      }
      if (c == '"' && cell.empty() && !cell_was_quoted) {
        quoted = cell_was_quoted = true;
      } else if (c == ',') {
        cells.push_back(cell_was_quoted ? cell : trim(cell));
        cell.clear();
        cell_was_quoted = false;
      } else if (c == '\n' || c == '\r') {
        if (c == '\r' && pos_ < text_.size() && text_[pos_] == '\n') ++pos_;
        ++line_;
        break;
      } else {
        cell += c;
      }
    }
    IMP_REQUIRE(DataError, !quoted, "manifest ", path_, ": the quote opened on line ", line,
                " is never closed; every quoted cell must end with a quote");
    cells.push_back(cell_was_quoted ? cell : trim(cell));
    return true;
  }

 private:
  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
  int64_t line_ = 1;
};

void read_csv(const std::string& text, Manifest& manifest) {
  CsvReader reader(text, manifest.path);
  std::vector<std::string> header, cells;
  int64_t line = 0;
  // Blank lines before the header are tolerated.
  while (reader.next(header, line) && header.size() == 1 && header[0].empty()) {
  }
  IMP_REQUIRE(DataError, !header.empty() && !(header.size() == 1 && header[0].empty()),
              "manifest ", manifest.path, " is empty; its first line must name the columns, "
              "e.g. image,caption,label");
  std::set<std::string> seen;
  for (size_t i = 0; i < header.size(); ++i) {
    header[i] = lower(trim(header[i]));
    IMP_REQUIRE(DataError, !header[i].empty(), "manifest ", manifest.path, ": column ", i + 1,
                " of the header has no name");
    IMP_REQUIRE(DataError, seen.insert(header[i]).second, "manifest ", manifest.path,
                ": the header names column '", header[i], "' twice");
  }
  while (reader.next(cells, line)) {
    if (cells.size() == 1 && cells[0].empty()) continue;  // a blank line
    if (cells.size() > header.size()) {
      manifest.problems.push_back(str_cat("manifest ", manifest.path, " line ", line, ": ",
                                          cells.size(), " cells but the header names ",
                                          header.size(), " columns; row skipped"));
      continue;
    }
    ManifestRow row;
    row.line = line;
    for (size_t i = 0; i < cells.size(); ++i) set_field(row, header[i], to_valid_utf8(cells[i]));
    manifest.rows.push_back(std::move(row));
  }
}

// A JSON value as manifest text: strings as they are, integers without a
// decimal point, other values in JSON notation.
std::string json_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void read_jsonl(const std::string& text, Manifest& manifest) {
  std::stringstream stream(text);
  std::string line_text;
  int64_t line = 0;
  while (std::getline(stream, line_text)) {
    ++line;
    if (trim(line_text).empty()) continue;
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(to_valid_utf8(line_text));
    } catch (const nlohmann::json::exception& e) {
      manifest.problems.push_back(str_cat("manifest ", manifest.path, " line ", line,
                                          ": not valid JSON (", e.what(), "); row skipped"));
      continue;
    }
    if (!object.is_object()) {
      manifest.problems.push_back(str_cat("manifest ", manifest.path, " line ", line,
                                          ": expected a JSON object, found ", object.type_name(),
                                          "; row skipped"));
      continue;
    }
    ManifestRow row;
    row.line = line;
    for (const auto& [key, value] : object.items()) {
      const std::string column = lower(key);
      if (value.is_null()) continue;
      if (column == "labels" && value.is_array()) {
        for (const auto& label : value) {
          const std::string name = trim(json_text(label));
          if (!name.empty()) row.labels.push_back(name);
        }
      } else {
        set_field(row, column, json_text(value));
      }
    }
    manifest.rows.push_back(std::move(row));
  }
}

}  // namespace

Manifest read_manifest(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  IMP_REQUIRE(DataError, file.good(), "cannot open manifest ", path,
              "; check the path (relative paths start at the current directory)");
  std::ostringstream buffer;
  buffer << file.rdbuf();
  const std::string text = buffer.str();

  Manifest manifest;
  manifest.path = path;
  const std::string extension = lower(std::filesystem::path(path).extension().string());
  if (extension == ".csv") {
    read_csv(text, manifest);
  } else if (extension == ".jsonl" || extension == ".json") {
    read_jsonl(text, manifest);
  } else {
    throw DataError(str_cat("manifest ", path, " has the extension '", extension,
                            "'; name it .csv for comma-separated values or .jsonl for one "
                            "JSON object per line"));
  }
  return manifest;
}

}  // namespace imp
