// HTML run report: reads the files of a run directory, checks their shape,
// and renders one page with inline SVG charts. The sections are built in
// this order: parsing the run files, SVG chart drawing, page sections, and
// the public entry points at the end.
#include "imp/report/report.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "imp/core/error.h"

namespace imp {
namespace {

namespace fs = std::filesystem;
// ordered_json keeps the key order of the files, so tasks, modalities and
// metrics appear in the order the trainer wrote them.
using Json = nlohmann::ordered_json;

// ===========================================================================
// Run data

// One line of metrics.jsonl. Optional numbers are NaN when the line lacks them.
struct MetricsRecord {
  int64_t step = 0;
  std::optional<int64_t> total_steps;
  double wall_s = NAN;
  double lr = NAN;
  double tokens_per_s = NAN;
  double examples_per_s = NAN;
  double ms_per_step = NAN;
  double data_wait = NAN;
  std::vector<std::pair<std::string, double>> loss;         // task -> mean loss
  std::vector<std::pair<std::string, int64_t>> task_steps;  // task -> "steps" value
  // MoE layer index -> modality -> share of first choices per expert.
  std::map<int64_t, std::vector<std::pair<std::string, std::vector<double>>>> expert_load;
};

struct EvalRecord {
  int64_t step = 0;
  std::vector<std::pair<std::string, double>> metrics;
};

struct RoutingModality {
  std::string name;
  std::vector<double> top_choice_share;
  std::vector<double> expert_share;  // empty when routing.json lacks it
  std::optional<int64_t> num_tokens;
  std::optional<int64_t> dropped_tokens;
  double dropped_fraction = NAN;
};

struct RoutingLayer {
  int64_t layer = 0;
  std::vector<RoutingModality> modalities;
};

struct RunData {
  fs::path dir;
  std::string name;
  std::vector<MetricsRecord> metrics;  // sorted by step, one record per step
  std::optional<std::vector<EvalRecord>> evals;  // sorted by step, or nullopt when the file is missing
  std::optional<std::vector<std::pair<std::string, Json>>> final_metrics;
  std::optional<std::vector<RoutingLayer>> routing;
  std::optional<std::string> config_yaml;
};

// Returns the contents of `path`, or nullopt when it does not exist.
std::optional<std::string> read_optional_file(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (status.type() == fs::file_type::not_found) return std::nullopt;
  if (error) {
    throw DataError(str_cat("failed to read ", path.string(), ": ", error.message(),
                            "; check the permissions of the run directory"));
  }
  if (!fs::is_regular_file(status)) {
    throw DataError(str_cat(path.string(), " is not a regular file; remove it or point imp report at "
                                           "another run directory"));
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) throw DataError(str_cat("failed to open ", path.string(), "; check its permissions"));
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw DataError(str_cat("failed to read ", path.string()));
  return text;
}

// The name of a JSON value's type, for error messages.
std::string type_name(const Json& value) {
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_object()) return "an object";
  if (value.is_array()) return "an array";
  if (value.is_boolean()) return "a boolean";
  return "null";
}

// Reads an optional number. Absent keys and null read as NaN, because
// nlohmann::json writes a non-finite double as null.
double optional_number(const Json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return NAN;
  IMP_REQUIRE(DataError, it->is_number(), where, ": \"", key, "\" must be a number, found ",
              type_name(*it), "; fix or delete this record");
  return it->get<double>();
}

// Reads an integer and rejects a number with a fractional part.
int64_t integer_value(const Json& value, const std::string& name, const std::string& where) {
  // 9e18 keeps the cast below inside the int64 range.
  const bool integral = value.is_number_integer() ||
                        (value.is_number_float() && std::floor(value.get<double>()) == value.get<double>() &&
                         std::fabs(value.get<double>()) < 9e18);
  IMP_REQUIRE(DataError, integral, where, ": ", name, " must be an integer, found ",
              value.is_number() ? value.dump() : type_name(value), "; fix or delete this record");
  return value.is_number_integer() ? value.get<int64_t>() : static_cast<int64_t>(value.get<double>());
}

const Json& require_object(const Json& value, const std::string& name, const std::string& where) {
  IMP_REQUIRE(DataError, value.is_object(), where, ": ", name, " must be a JSON object, found ",
              type_name(value), "; fix or delete this record");
  return value;
}

std::vector<double> number_array(const Json& value, const std::string& name, const std::string& where) {
  IMP_REQUIRE(DataError, value.is_array(), where, ": ", name, " must be an array of numbers, found ",
              type_name(value));
  std::vector<double> numbers;
  for (const Json& element : value) {
    IMP_REQUIRE(DataError, element.is_number(), where, ": ", name, " must be an array of numbers, but it contains ",
                type_name(element));
    numbers.push_back(element.get<double>());
  }
  return numbers;
}

// Splits text into lines and parses each non-blank one as a JSON object.
// Returns (line number, object) pairs. Line numbers start at 1.
std::vector<std::pair<int, Json>> parse_json_lines(const std::string& text, const fs::path& path) {
  std::vector<std::pair<int, Json>> records;
  std::istringstream lines(text);
  std::string line;
  int line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Json record;
    try {
      record = Json::parse(line);
    } catch (const Json::parse_error& error) {
      throw DataError(str_cat(path.string(), " line ", line_number, ": invalid JSON (", error.what(),
                              "); fix or delete this line"));
    }
    IMP_REQUIRE(DataError, record.is_object(), path.string(), " line ", line_number,
                ": expected a JSON object, found ", type_name(record), "; fix or delete this line");
    records.emplace_back(line_number, std::move(record));
  }
  return records;
}

// Parses a whole-file JSON document, naming the line of a syntax error.
Json parse_json_file(const std::string& text, const fs::path& path) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& error) {
    const size_t end = std::min<size_t>(error.byte, text.size());
    const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + end, '\n'));
    throw DataError(str_cat(path.string(), " line ", line, ": invalid JSON (", error.what(),
                            "); fix the file or delete it to leave its section out of the report"));
  }
}

MetricsRecord parse_metrics_record(const Json& object, const std::string& where) {
  MetricsRecord record;
  const auto step = object.find("step");
  IMP_REQUIRE(DataError, step != object.end(), where, ": missing \"step\"; fix or delete this line");
  record.step = integer_value(*step, "\"step\"", where);
  if (const auto total = object.find("total_steps"); total != object.end() && !total->is_null()) {
    record.total_steps = integer_value(*total, "\"total_steps\"", where);
  }
  record.wall_s = optional_number(object, "wall_s", where);
  record.lr = optional_number(object, "lr", where);
  record.tokens_per_s = optional_number(object, "tokens_per_s", where);
  record.examples_per_s = optional_number(object, "examples_per_s", where);
  record.ms_per_step = optional_number(object, "ms_per_step", where);
  record.data_wait = optional_number(object, "data_wait", where);

  if (const auto loss = object.find("loss"); loss != object.end() && !loss->is_null()) {
    for (const auto& [task, value] : require_object(*loss, "\"loss\"", where).items()) {
      if (value.is_null()) continue;  // a non-finite loss, written as null
      IMP_REQUIRE(DataError, value.is_number(), where, ": loss of task \"", task, "\" must be a number, found ",
                  type_name(value), "; fix or delete this line");
      record.loss.emplace_back(task, value.get<double>());
    }
  }
  if (const auto steps = object.find("steps"); steps != object.end() && !steps->is_null()) {
    for (const auto& [task, value] : require_object(*steps, "\"steps\"", where).items()) {
      record.task_steps.emplace_back(task, integer_value(value, "steps of task \"" + task + "\"", where));
    }
  }
  if (const auto load = object.find("expert_load"); load != object.end() && !load->is_null()) {
    for (const auto& [layer_key, by_modality] : require_object(*load, "\"expert_load\"", where).items()) {
      int64_t layer = 0;
      size_t parsed = 0;
      try {
        layer = std::stoll(layer_key, &parsed);
      } catch (const std::exception&) {
        parsed = 0;
      }
      IMP_REQUIRE(DataError, parsed == layer_key.size() && !layer_key.empty(), where,
                  ": expert_load keys must be MoE layer indices, found \"", layer_key, "\"");
      const std::string name = "expert_load[\"" + layer_key + "\"]";
      auto& modalities = record.expert_load[layer];
      for (const auto& [modality, shares] : require_object(by_modality, name, where).items()) {
        modalities.emplace_back(modality, number_array(shares, name + "[\"" + modality + "\"]", where));
      }
    }
  }
  return record;
}

std::vector<MetricsRecord> read_metrics(const fs::path& dir) {
  const fs::path path = dir / "metrics.jsonl";
  const std::optional<std::string> text = read_optional_file(path);
  IMP_REQUIRE(DataError, text.has_value(), "no metrics.jsonl in ", dir.string(),
              ": this is not a run directory, or training has not logged yet. Pass the directory that "
              "`imp train` wrote, or wait until the first logging interval has passed");
  // A resumed run logs some steps again; the later line for a step wins.
  std::map<int64_t, MetricsRecord> by_step;
  for (const auto& [line_number, object] : parse_json_lines(*text, path)) {
    MetricsRecord record = parse_metrics_record(object, str_cat(path.string(), " line ", line_number));
    by_step[record.step] = std::move(record);
  }
  IMP_REQUIRE(DataError, !by_step.empty(), path.string(),
              " has no records: training has not logged yet; run imp report again after the first logging interval");
  std::vector<MetricsRecord> records;
  for (auto& [step, record] : by_step) records.push_back(std::move(record));
  return records;
}

std::optional<std::vector<EvalRecord>> read_evals(const fs::path& dir) {
  const fs::path path = dir / "evals.jsonl";
  const std::optional<std::string> text = read_optional_file(path);
  if (!text) return std::nullopt;
  std::map<int64_t, EvalRecord> by_step;  // the later line for a step wins
  for (const auto& [line_number, object] : parse_json_lines(*text, path)) {
    const std::string where = str_cat(path.string(), " line ", line_number);
    EvalRecord record;
    const auto step = object.find("step");
    IMP_REQUIRE(DataError, step != object.end(), where, ": missing \"step\"; fix or delete this line");
    record.step = integer_value(*step, "\"step\"", where);
    const auto metrics = object.find("metrics");
    IMP_REQUIRE(DataError, metrics != object.end(), where, ": missing \"metrics\"; fix or delete this line");
    for (const auto& [name, value] : require_object(*metrics, "\"metrics\"", where).items()) {
      if (value.is_null()) continue;
      IMP_REQUIRE(DataError, value.is_number(), where, ": metric \"", name, "\" must be a number, found ",
                  type_name(value), "; fix or delete this line");
      record.metrics.emplace_back(name, value.get<double>());
    }
    by_step[record.step] = std::move(record);
  }
  std::vector<EvalRecord> records;
  for (auto& [step, record] : by_step) records.push_back(std::move(record));
  return records;
}

std::optional<std::vector<std::pair<std::string, Json>>> read_final_metrics(const fs::path& dir) {
  const fs::path path = dir / "eval.json";
  const std::optional<std::string> text = read_optional_file(path);
  if (!text) return std::nullopt;
  const Json document = parse_json_file(*text, path);
  IMP_REQUIRE(DataError, document.is_object(), path.string(), ": expected a JSON object of metric names to values, found ",
              type_name(document), "; fix the file or delete it");
  std::vector<std::pair<std::string, Json>> metrics;
  for (const auto& [name, value] : document.items()) {
    IMP_REQUIRE(DataError, !value.is_object() && !value.is_array(), path.string(), ": metric \"", name,
                "\" must be a number or string, found ", type_name(value), "; fix the file or delete it");
    metrics.emplace_back(name, value);
  }
  return metrics;
}

RoutingModality parse_routing_modality(const std::string& name, const Json& values, const std::string& where) {
  RoutingModality modality;
  modality.name = name;
  require_object(values, "the entry", where);
  const auto top = values.find("top_choice_share");
  IMP_REQUIRE(DataError, top != values.end(), where, ": missing \"top_choice_share\"; fix the file or delete it");
  modality.top_choice_share = number_array(*top, "\"top_choice_share\"", where);
  if (const auto share = values.find("expert_share"); share != values.end()) {
    modality.expert_share = number_array(*share, "\"expert_share\"", where);
  }
  if (const auto tokens = values.find("num_tokens"); tokens != values.end()) {
    modality.num_tokens = integer_value(*tokens, "\"num_tokens\"", where);
  }
  if (const auto dropped = values.find("dropped_tokens"); dropped != values.end()) {
    modality.dropped_tokens = integer_value(*dropped, "\"dropped_tokens\"", where);
  }
  modality.dropped_fraction = optional_number(values, "dropped_fraction", where);
  return modality;
}

std::optional<std::vector<RoutingLayer>> read_routing(const fs::path& dir) {
  const fs::path path = dir / "routing.json";
  const std::optional<std::string> text = read_optional_file(path);
  if (!text) return std::nullopt;
  const Json document = parse_json_file(*text, path);
  const std::string file = path.string();
  IMP_REQUIRE(DataError, document.is_object() && document.contains("layers") && document["layers"].is_array(),
              file, ": expected an object with a \"layers\" array; fix the file or delete it");
  std::vector<RoutingLayer> layers;
  for (size_t i = 0; i < document["layers"].size(); ++i) {
    const Json& entry = document["layers"][i];
    const std::string where = str_cat(file, ": layers[", i, "]");
    require_object(entry, "the entry", where);
    IMP_REQUIRE(DataError, entry.contains("layer"), where, ": missing \"layer\"; fix the file or delete it");
    IMP_REQUIRE(DataError, entry.contains("modalities"), where, ": missing \"modalities\"; fix the file or delete it");
    RoutingLayer layer;
    layer.layer = integer_value(entry["layer"], "\"layer\"", where);
    size_t experts = 0;
    for (const auto& [name, values] : require_object(entry["modalities"], "\"modalities\"", where).items()) {
      RoutingModality modality = parse_routing_modality(name, values, where + ".modalities[\"" + name + "\"]");
      // Every row of the heatmap must have one cell per expert.
      if (layer.modalities.empty()) experts = modality.top_choice_share.size();
      IMP_REQUIRE(DataError, modality.top_choice_share.size() == experts, where, ": modality \"", name,
                  "\" has ", modality.top_choice_share.size(), " experts in top_choice_share but \"",
                  layer.modalities.front().name, "\" has ", experts, "; fix the file or delete it");
      layer.modalities.push_back(std::move(modality));
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

RunData read_run(const std::string& run_dir) {
  RunData run;
  run.dir = fs::path(run_dir);
  std::error_code error;
  const bool is_directory = fs::is_directory(run.dir, error);
  IMP_REQUIRE(DataError, is_directory, "run directory ", run_dir,
              " not found or not a directory; pass the directory that `imp train` wrote");
  fs::path absolute = fs::absolute(run.dir, error).lexically_normal();
  if (absolute.filename().empty()) absolute = absolute.parent_path();  // a trailing slash
  run.name = absolute.filename().string();

  run.metrics = read_metrics(run.dir);
  run.evals = read_evals(run.dir);
  run.final_metrics = read_final_metrics(run.dir);
  run.routing = read_routing(run.dir);
  run.config_yaml = read_optional_file(run.dir / "config.yaml");
  return run;
}

// ===========================================================================
// Formatting

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string printf_string(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

// A value for tables: integers in full, other numbers to 4 significant digits.
std::string format_value(double value) {
  if (std::isnan(value)) return "–";
  if (std::floor(value) == value && std::fabs(value) < 1e15) return printf_string("%.0f", value);
  if (std::fabs(value) >= 1000) return printf_string("%.1f", value);
  return printf_string("%.4g", value);
}

// A number for SVG coordinates.
std::string coordinate(double value) { return printf_string("%.1f", value); }

std::string format_duration(double seconds) {
  if (std::isnan(seconds)) return "–";
  const auto total = static_cast<long long>(std::llround(seconds));
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld (%.1f s)", total / 3600, (total / 60) % 60, total % 60,
                seconds);
  return buffer;
}

// Turns a name from the files into an id fragment: lowercase letters, digits
// and '-'. `used` makes every id unique by appending a counter.
std::string make_id(const std::string& prefix, const std::string& name, std::set<std::string>& used) {
  std::string slug;
  for (const char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) && byte < 0x80) {
      slug += static_cast<char>(std::tolower(byte));
    } else if (!slug.empty() && slug.back() != '-') {
      slug += '-';
    }
  }
  while (!slug.empty() && slug.back() == '-') slug.pop_back();
  if (slug.empty()) slug = "unnamed";
  std::string id = prefix + slug;
  for (int counter = 2; used.count(id) > 0; ++counter) id = str_cat(prefix, slug, "-", counter);
  used.insert(id);
  return id;
}

// Median of the non-NaN values, or NaN when there are none.
double median(std::vector<double> values) {
  values.erase(std::remove_if(values.begin(), values.end(), [](double v) { return std::isnan(v); }), values.end());
  if (values.empty()) return NAN;
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

// ===========================================================================
// SVG charts

// Line colours, chosen to stay distinguishable on white and in print.
// Sixteen, so that the default config's eleven tasks all differ.
const char* const kPalette[] = {"#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                                "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#1e3a8a", "#7f1d1d",
                                "#0f766e", "#a21caf", "#92400e", "#000000"};
constexpr size_t kPaletteSize = sizeof kPalette / sizeof kPalette[0];

// Series with more points than this get no per-point hover markers, which
// keeps the page small for long runs.
constexpr size_t kMaxMarkersPerSeries = 120;

struct Point {
  double x;
  double y;
};

struct Series {
  std::string name;
  std::vector<Point> points;
};

struct ChartSpec {
  std::string id;
  std::string title;    // shown above the plot, and the SVG's <title> and aria-label
  std::string y_label;
  bool allow_log_y = false;  // use a log scale when the values span more than 10x
  bool include_zero = false;
  int width = 900;
  int height = 300;
};

// One axis: the data range it shows, and where its ticks go.
struct Axis {
  double low = 0.0;  // in log10 units when `log` is set
  double high = 1.0;
  bool log = false;
  std::vector<double> ticks;  // in data units

  // Maps a data value to a pixel between `from` (at low) and `to` (at high).
  double map(double value, double from, double to) const {
    const double position = log ? std::log10(value) : value;
    return from + (position - low) / (high - low) * (to - from);
  }
};

// The 1, 2 or 5 times a power of ten closest above `raw`.
double nice_step(double raw) {
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double fraction = raw / magnitude;
  if (fraction <= 1) return magnitude;
  if (fraction <= 2) return 2 * magnitude;
  if (fraction <= 5) return 5 * magnitude;
  return 10 * magnitude;
}

Axis linear_axis(double low, double high) {
  if (!(high > low)) {
    const double pad = low == 0 ? 1.0 : std::fabs(low) * 0.1;
    low -= pad;
    high += pad;
  }
  const double step = nice_step((high - low) / 5);
  Axis axis;
  axis.low = std::floor(low / step) * step;
  axis.high = std::ceil(high / step) * step;
  const int count = static_cast<int>(std::llround((axis.high - axis.low) / step));
  for (int i = 0; i <= count; ++i) {
    double tick = axis.low + i * step;
    if (std::fabs(tick) < step * 1e-9) tick = 0.0;  // avoid "-0" and 1e-17 labels
    axis.ticks.push_back(tick);
  }
  return axis;
}

// Ticks at powers of ten, plus 2x and 5x when the range spans few decades.
Axis log_axis(double low, double high) {
  Axis axis;
  axis.log = true;
  const double log_low = std::log10(low);
  const double log_high = std::log10(high);
  const double pad = 0.05 * (log_high - log_low);
  axis.low = log_low - pad;
  axis.high = log_high + pad;
  const bool few_decades = axis.high - axis.low <= 3.0;
  for (int decade = static_cast<int>(std::floor(axis.low)); decade <= static_cast<int>(std::ceil(axis.high));
       ++decade) {
    for (const double multiple : {1.0, 2.0, 5.0}) {
      if (multiple != 1.0 && !few_decades) continue;
      const double tick = multiple * std::pow(10.0, decade);
      const double position = std::log10(tick);
      if (position >= axis.low && position <= axis.high) axis.ticks.push_back(tick);
    }
  }
  return axis;
}

std::string tick_label(double value) { return printf_string("%g", value); }

// Draws a line chart with one polyline per series, inside a <figure> with an
// HTML legend. Points carry <title> hover text when there are few enough.
std::string render_line_chart(const ChartSpec& spec, const std::vector<Series>& series) {
  double x_min = INFINITY, x_max = -INFINITY, y_min = INFINITY, y_max = -INFINITY;
  for (const Series& line : series) {
    for (const Point& point : line.points) {
      x_min = std::min(x_min, point.x);
      x_max = std::max(x_max, point.x);
      y_min = std::min(y_min, point.y);
      y_max = std::max(y_max, point.y);
    }
  }
  if (spec.include_zero) {
    y_min = std::min(y_min, 0.0);
    y_max = std::max(y_max, 0.0);
  }
  const bool log_y = spec.allow_log_y && y_min > 0 && y_max / y_min > 10.0;
  const Axis x_axis = linear_axis(x_min, x_max);
  const Axis y_axis = log_y ? log_axis(y_min, y_max) : linear_axis(y_min, y_max);

  const double left = 72, right = spec.width - 16.0, top = 34, bottom = spec.height - 44.0;
  std::ostringstream svg;
  svg << "<figure class=\"chart\">\n"
      << "<svg id=\"" << spec.id << "\" role=\"img\" aria-label=\"" << html_escape(spec.title) << "\" viewBox=\"0 0 "
      << spec.width << " " << spec.height << "\" width=\"" << spec.width << "\" height=\"" << spec.height << "\">\n"
      << "<title>" << html_escape(spec.title) << "</title>\n"
      << "<text class=\"chart-title\" x=\"" << left << "\" y=\"20\">" << html_escape(spec.title)
      << (log_y ? " (log scale)" : "") << "</text>\n";

  // Grid lines and tick labels.
  for (const double tick : y_axis.ticks) {
    const std::string y = coordinate(y_axis.map(tick, bottom, top));
    svg << "<line class=\"grid\" x1=\"" << left << "\" x2=\"" << right << "\" y1=\"" << y << "\" y2=\"" << y
        << "\"/><text class=\"tick\" x=\"" << left - 6 << "\" y=\"" << y << "\" text-anchor=\"end\" "
        << "dominant-baseline=\"middle\">" << tick_label(tick) << "</text>\n";
  }
  for (const double tick : x_axis.ticks) {
    const std::string x = coordinate(x_axis.map(tick, left, right));
    svg << "<line class=\"grid\" x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << top << "\" y2=\"" << bottom
        << "\"/><text class=\"tick\" x=\"" << x << "\" y=\"" << bottom + 16 << "\" text-anchor=\"middle\">"
        << tick_label(tick) << "</text>\n";
  }
  svg << "<rect class=\"frame\" x=\"" << left << "\" y=\"" << top << "\" width=\"" << right - left << "\" height=\""
      << bottom - top << "\"/>\n"
      << "<text class=\"axis-label\" x=\"" << (left + right) / 2 << "\" y=\"" << spec.height - 8
      << "\" text-anchor=\"middle\">step</text>\n"
      << "<text class=\"axis-label\" transform=\"translate(16 " << (top + bottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\">" << html_escape(spec.y_label) << "</text>\n";

  for (size_t i = 0; i < series.size(); ++i) {
    const Series& line = series[i];
    const char* colour = kPalette[i % kPaletteSize];
    svg << "<g class=\"series\" data-series=\"" << html_escape(line.name) << "\">\n"
        << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"";
    for (size_t j = 0; j < line.points.size(); ++j) {
      svg << (j > 0 ? " " : "") << coordinate(x_axis.map(line.points[j].x, left, right)) << ","
          << coordinate(y_axis.map(line.points[j].y, bottom, top));
    }
    svg << "\"><title>" << html_escape(line.name) << "</title></polyline>\n";
    // A single point draws no line, so it always gets a marker.
    if (line.points.size() <= kMaxMarkersPerSeries) {
      for (const Point& point : line.points) {
        svg << "<circle class=\"marker\" cx=\"" << coordinate(x_axis.map(point.x, left, right)) << "\" cy=\""
            << coordinate(y_axis.map(point.y, bottom, top)) << "\" r=\"3\" fill=\"" << colour << "\"><title>"
            << html_escape(line.name) << " at step " << format_value(point.x) << ": " << format_value(point.y)
            << "</title></circle>\n";
      }
    }
    svg << "</g>\n";
  }
  svg << "</svg>\n<figcaption><ul class=\"legend\">";
  for (size_t i = 0; i < series.size(); ++i) {
    svg << "<li><span class=\"swatch\" style=\"background:" << kPalette[i % kPaletteSize] << "\"></span>"
        << html_escape(series[i].name) << "</li>";
  }
  svg << "</ul></figcaption>\n</figure>\n";
  return svg.str();
}

// Interpolates from near-white (t = 0) to dark blue (t = 1).
std::string heat_colour(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const auto channel = [t](int from, int to) { return static_cast<int>(std::lround(from + (to - from) * t)); };
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "rgb(%d,%d,%d)", channel(247, 8), channel(251, 48), channel(255, 107));
  return buffer;
}

// Draws the expert-by-modality table of one MoE layer: rows are modalities,
// columns experts, and each cell shows top_choice_share.
std::string render_heatmap(const RoutingLayer& layer) {
  const size_t experts = layer.modalities.empty() ? 0 : layer.modalities.front().top_choice_share.size();
  size_t longest_name = 8;
  double max_share = 0.0;
  for (const RoutingModality& modality : layer.modalities) {
    longest_name = std::max(longest_name, modality.name.size());
    for (const double share : modality.top_choice_share) max_share = std::max(max_share, share);
  }
  // Colours scale to the largest cell of this layer, so an imbalance shows
  // even with many experts, where every share is small.
  const double colour_scale = max_share > 0 ? max_share : 1.0;
  const double cell_width = 60, cell_height = 34;
  const double left = 16 + 7.5 * static_cast<double>(std::min<size_t>(longest_name, 40)), top = 48;
  const double width = left + cell_width * experts + 16;
  const double height = top + cell_height * layer.modalities.size() + 12;
  const std::string title = str_cat("MoE layer ", layer.layer, ": share of each modality's tokens whose first choice is each expert");

  std::ostringstream svg;
  svg << "<figure class=\"heatmap\">\n"
      << "<svg id=\"heatmap-layer-" << layer.layer << "\" role=\"img\" aria-label=\"" << html_escape(title)
      << "\" viewBox=\"0 0 " << coordinate(width) << " " << coordinate(height) << "\" width=\"" << coordinate(width)
      << "\" height=\"" << coordinate(height) << "\">\n"
      << "<title>" << html_escape(title) << "</title>\n"
      << "<text class=\"chart-title\" x=\"16\" y=\"20\">MoE layer " << layer.layer << "</text>\n";
  for (size_t expert = 0; expert < experts; ++expert) {
    svg << "<text class=\"tick\" x=\"" << coordinate(left + cell_width * (expert + 0.5)) << "\" y=\"" << top - 8
        << "\" text-anchor=\"middle\">expert " << expert << "</text>\n";
  }
  for (size_t row = 0; row < layer.modalities.size(); ++row) {
    const RoutingModality& modality = layer.modalities[row];
    const double y = top + cell_height * row;
    svg << "<text class=\"row-label\" x=\"" << left - 8 << "\" y=\"" << coordinate(y + cell_height / 2)
        << "\" text-anchor=\"end\" dominant-baseline=\"middle\">" << html_escape(modality.name) << "</text>\n";
    for (size_t expert = 0; expert < experts; ++expert) {
      const double share = modality.top_choice_share[expert];
      const double t = share / colour_scale;
      const double x = left + cell_width * expert;
      svg << "<g class=\"cell\"><rect x=\"" << coordinate(x) << "\" y=\"" << coordinate(y) << "\" width=\""
          << cell_width << "\" height=\"" << cell_height << "\" fill=\"" << heat_colour(t) << "\"><title>"
          << html_escape(modality.name) << ", expert " << expert << ": top-choice share " << format_value(share);
      if (expert < modality.expert_share.size()) {
        svg << ", share of all routed slots " << format_value(modality.expert_share[expert]);
      }
      svg << "</title></rect><text class=\"cell-value\" x=\"" << coordinate(x + cell_width / 2) << "\" y=\""
          << coordinate(y + cell_height / 2) << "\" text-anchor=\"middle\" dominant-baseline=\"middle\" fill=\""
          << (t > 0.55 ? "#ffffff" : "#111827") << "\">" << printf_string("%.2f", share) << "</text></g>\n";
    }
  }
  svg << "</svg>\n<figcaption>Cell colour runs from white (0) to dark blue (" << printf_string("%.2f", max_share)
      << ", the largest cell of this layer).</figcaption>\n</figure>\n";
  return svg.str();
}

// ===========================================================================
// Page sections

std::string missing_file_sentence(const std::string& file, const std::string& consequence) {
  return str_cat("<p class=\"missing\">", file, " is missing from this run directory, so ", consequence, ".</p>\n");
}

// Collects one series per name from the metrics records, in order of first appearance.
template <typename Extract>
std::vector<Series> collect_series(const std::vector<MetricsRecord>& records, Extract extract) {
  std::vector<Series> series;
  std::map<std::string, size_t> index;
  for (const MetricsRecord& record : records) {
    for (const auto& [name, value] : extract(record)) {
      if (std::isnan(value)) continue;
      auto [it, inserted] = index.emplace(name, series.size());
      if (inserted) series.push_back(Series{name, {}});
      series[it->second].points.push_back(Point{static_cast<double>(record.step), value});
    }
  }
  return series;
}

std::vector<Series> single_series(const std::vector<MetricsRecord>& records, const std::string& name,
                                  double MetricsRecord::*field) {
  return collect_series(records, [&](const MetricsRecord& record) {
    return std::vector<std::pair<std::string, double>>{{name, record.*field}};
  });
}

std::string render_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows) {
  std::ostringstream html;
  html << "<table>\n<thead><tr>";
  for (const std::string& cell : header) html << "<th>" << cell << "</th>";
  html << "</tr></thead>\n<tbody>\n";
  for (const auto& row : rows) {
    html << "<tr>";
    for (const std::string& cell : row) html << "<td>" << cell << "</td>";
    html << "</tr>\n";
  }
  html << "</tbody>\n</table>\n";
  return html.str();
}

std::string render_final_metrics(const RunData& run) {
  std::ostringstream html;
  if (run.final_metrics) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& [name, value] : *run.final_metrics) {
      const std::string text = value.is_number()   ? format_value(value.get<double>())
                               : value.is_string() ? value.get<std::string>()
                                                   : value.dump();
      rows.push_back({"<code>" + html_escape(name) + "</code>", html_escape(text)});
    }
    html << "<h3>Final metrics (eval.json)</h3>\n" << render_table({"metric", "value"}, rows);
    return html.str();
  }
  html << missing_file_sentence("eval.json", "there are no final metrics");
  if (run.evals && !run.evals->empty()) {
    const EvalRecord& latest = run.evals->back();
    std::vector<std::vector<std::string>> rows;
    for (const auto& [name, value] : latest.metrics) {
      rows.push_back({"<code>" + html_escape(name) + "</code>", format_value(value)});
    }
    html << "<h3>Latest evaluation (evals.jsonl, step " << latest.step << ")</h3>\n"
         << render_table({"metric", "value"}, rows);
  }
  return html.str();
}

std::string render_task_table(const RunData& run) {
  struct TaskSummary {
    double last_loss = NAN;
    int64_t last_step = 0;
    double min_loss = INFINITY;
    std::optional<int64_t> steps;
  };
  std::vector<std::string> order;
  std::map<std::string, TaskSummary> tasks;
  for (const MetricsRecord& record : run.metrics) {
    for (const auto& [task, loss] : record.loss) {
      if (tasks.count(task) == 0) order.push_back(task);
      TaskSummary& summary = tasks[task];
      summary.last_loss = loss;
      summary.last_step = record.step;
      summary.min_loss = std::min(summary.min_loss, loss);
    }
    for (const auto& [task, steps] : record.task_steps) {
      if (tasks.count(task) == 0) order.push_back(task);
      tasks[task].steps = steps;
    }
  }
  if (order.empty()) return "<p>metrics.jsonl has no per-task losses.</p>\n";
  std::vector<std::vector<std::string>> rows;
  for (const std::string& task : order) {
    const TaskSummary& summary = tasks[task];
    const bool has_loss = !std::isnan(summary.last_loss);
    rows.push_back({"<code>" + html_escape(task) + "</code>",
                    has_loss ? str_cat(format_value(summary.last_loss), " (step ", summary.last_step, ")") : "–",
                    has_loss ? format_value(summary.min_loss) : "–",
                    summary.steps ? std::to_string(*summary.steps) : "–"});
  }
  return "<h3>Tasks</h3>\n" +
         render_table({"task", "last logged loss", "lowest logged loss", "steps in the last interval"}, rows);
}

std::string render_summary(const RunData& run) {
  const MetricsRecord& last = run.metrics.back();
  std::vector<double> tokens, examples, step_ms, waits;
  for (const MetricsRecord& record : run.metrics) {
    tokens.push_back(record.tokens_per_s);
    examples.push_back(record.examples_per_s);
    step_ms.push_back(record.ms_per_step);
    waits.push_back(record.data_wait);
  }
  std::string steps = std::to_string(last.step);
  if (last.total_steps && *last.total_steps > 0) {
    steps += str_cat(" of ", *last.total_steps, " (",
                     printf_string("%.0f", 100.0 * static_cast<double>(last.step) / static_cast<double>(*last.total_steps)),
                     "%)");
  }
  // A number with a fixed format, or a dash when it is unknown.
  const auto fixed = [](double value, const char* format) {
    return std::isnan(value) ? std::string("–") : printf_string(format, value);
  };
  const std::vector<std::vector<std::string>> rows = {
      {"last logged step", steps},
      {"logging intervals", std::to_string(run.metrics.size())},
      {"training time at the last log (wall_s)", format_duration(last.wall_s)},
      {"learning rate at the last log", format_value(last.lr)},
      {"tokens/s (median over intervals)", fixed(median(tokens), "%.0f")},
      {"examples/s (median over intervals)", fixed(median(examples), "%.0f")},
      {"ms per step (median over intervals)", fixed(median(step_ms), "%.1f")},
      {"time waiting for data (median over intervals)", fixed(100.0 * median(waits), "%.1f%%")},
  };
  std::ostringstream html;
  html << "<section id=\"summary\">\n<h2>Summary</h2>\n"
       << render_table({"quantity", "value"}, rows) << render_final_metrics(run) << render_task_table(run)
       << "</section>\n";
  return html.str();
}

std::string render_training_curves(const RunData& run) {
  std::ostringstream html;
  html << "<section id=\"training\">\n<h2>Training</h2>\n";
  const std::vector<Series> loss = collect_series(run.metrics, [](const MetricsRecord& record) { return record.loss; });
  if (loss.empty()) {
    html << "<p>metrics.jsonl has no \"loss\" values.</p>\n";
  } else {
    ChartSpec spec{"chart-loss", "Training loss per task, mean over each logging interval", "loss"};
    spec.allow_log_y = true;
    html << render_line_chart(spec, loss);
  }

  const std::vector<Series> lr = single_series(run.metrics, "learning rate", &MetricsRecord::lr);
  if (lr.empty()) {
    html << "<p>metrics.jsonl has no \"lr\" values.</p>\n";
  } else {
    ChartSpec spec{"chart-lr", "Learning rate", "learning rate"};
    spec.include_zero = true;
    spec.height = 240;
    html << render_line_chart(spec, lr);
  }

  const std::vector<Series> tokens = single_series(run.metrics, "tokens/s", &MetricsRecord::tokens_per_s);
  if (tokens.empty()) {
    html << "<p>metrics.jsonl has no \"tokens_per_s\" values.</p>\n";
  } else {
    ChartSpec spec{"chart-tokens-per-s", "Throughput (tokens per second)", "tokens/s"};
    spec.include_zero = true;
    spec.height = 240;
    html << render_line_chart(spec, tokens);
  }
  html << "</section>\n";
  return html.str();
}

// The dataset part of a metric name: the text before the first '/', or the
// whole name when it has none.
std::string dataset_prefix(const std::string& metric) { return metric.substr(0, metric.find('/')); }

std::string render_evaluations(const RunData& run) {
  std::ostringstream html;
  html << "<section id=\"evaluation\">\n<h2>Evaluation</h2>\n";
  if (!run.evals) {
    html << missing_file_sentence("evals.jsonl", "there are no evaluation curves") << "</section>\n";
    return html.str();
  }
  const std::vector<EvalRecord>& evals = *run.evals;
  if (evals.empty()) {
    html << "<p>evals.jsonl has no evaluations yet.</p>\n</section>\n";
    return html.str();
  }
  if (evals.size() == 1) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& [name, value] : evals.front().metrics) {
      rows.push_back({"<code>" + html_escape(name) + "</code>", format_value(value)});
    }
    html << "<p>One evaluation, at step " << evals.front().step << ".</p>\n"
         << "<div id=\"table-evaluation\">" << render_table({"metric", "value"}, rows) << "</div>\n</section>\n";
    return html.str();
  }

  // One chart per dataset, one line per metric of that dataset.
  std::vector<std::string> prefixes;
  std::map<std::string, std::vector<Series>> charts;
  std::map<std::string, size_t> series_index;
  for (const EvalRecord& record : evals) {
    for (const auto& [name, value] : record.metrics) {
      const std::string prefix = dataset_prefix(name);
      if (charts.count(prefix) == 0) prefixes.push_back(prefix);
      std::vector<Series>& series = charts[prefix];
      auto [it, inserted] = series_index.emplace(name, series.size());
      if (inserted) {
        const std::string label = name.size() > prefix.size() ? name.substr(prefix.size() + 1) : name;
        series.push_back(Series{label, {}});
      }
      series[it->second].points.push_back(Point{static_cast<double>(record.step), value});
    }
  }
  std::set<std::string> used_ids;
  for (const std::string& prefix : prefixes) {
    ChartSpec spec{make_id("chart-eval-", prefix, used_ids), "Evaluation: " + prefix, "value"};
    spec.height = 260;
    html << render_line_chart(spec, charts[prefix]);
  }
  html << "</section>\n";
  return html.str();
}

std::string render_routing(const RunData& run) {
  std::ostringstream html;
  html << "<section id=\"routing\">\n<h2>Expert routing by modality</h2>\n";
  if (!run.routing) {
    html << missing_file_sentence("routing.json", "there is no routing heatmap") << "</section>\n";
    return html.str();
  }
  if (run.routing->empty()) {
    html << "<p>routing.json lists no MoE layers.</p>\n</section>\n";
    return html.str();
  }
  html << "<p>Each cell is the share of a modality's tokens whose first choice was that expert "
          "(top_choice_share in routing.json).</p>\n";
  for (const RoutingLayer& layer : *run.routing) {
    html << render_heatmap(layer);
    std::vector<std::vector<std::string>> rows;
    for (const RoutingModality& modality : layer.modalities) {
      rows.push_back({html_escape(modality.name), modality.num_tokens ? std::to_string(*modality.num_tokens) : "–",
                      modality.dropped_tokens ? std::to_string(*modality.dropped_tokens) : "–",
                      format_value(modality.dropped_fraction)});
    }
    html << render_table({"modality", "tokens", "dropped tokens", "dropped fraction"}, rows);
  }
  html << "</section>\n";
  return html.str();
}

std::string render_expert_load(const RunData& run) {
  // layer -> modality -> expert -> points, keeping modality order of first appearance.
  std::map<int64_t, std::vector<std::pair<std::string, std::vector<Series>>>> layers;
  for (const MetricsRecord& record : run.metrics) {
    for (const auto& [layer, modalities] : record.expert_load) {
      auto& by_modality = layers[layer];
      for (const auto& [modality, shares] : modalities) {
        auto it = std::find_if(by_modality.begin(), by_modality.end(),
                               [&](const auto& entry) { return entry.first == modality; });
        if (it == by_modality.end()) it = by_modality.insert(by_modality.end(), {modality, {}});
        std::vector<Series>& experts = it->second;
        for (size_t expert = 0; expert < shares.size(); ++expert) {
          if (expert >= experts.size()) experts.push_back(Series{str_cat("expert ", expert), {}});
          experts[expert].points.push_back(Point{static_cast<double>(record.step), shares[expert]});
        }
      }
    }
  }
  std::ostringstream html;
  html << "<section id=\"expert-load\">\n<h2>Expert load over time</h2>\n";
  if (layers.empty()) {
    html << "<p>metrics.jsonl has no \"expert_load\" values, so there are no expert load curves.</p>\n</section>\n";
    return html.str();
  }
  html << "<p>Share of each modality's tokens whose first choice was each expert, per logging interval "
          "(expert_load in metrics.jsonl).</p>\n";
  std::set<std::string> used_ids;
  for (const auto& [layer, modalities] : layers) {
    html << "<h3>MoE layer " << layer << "</h3>\n<div class=\"chart-row\">\n";
    for (const auto& [modality, experts] : modalities) {
      ChartSpec spec{make_id(str_cat("chart-expert-load-layer-", layer, "-"), modality, used_ids),
                     str_cat("Layer ", layer, ", ", modality), "share of tokens"};
      spec.include_zero = true;
      spec.width = 520;
      spec.height = 240;
      html << render_line_chart(spec, experts);
    }
    html << "</div>\n";
  }
  html << "</section>\n";
  return html.str();
}

std::string render_config(const RunData& run) {
  if (!run.config_yaml) {
    return "<section id=\"config\">\n<h2>Configuration</h2>\n" +
           missing_file_sentence("config.yaml", "the configuration cannot be shown") + "</section>\n";
  }
  return "<section id=\"config\">\n<h2>Configuration</h2>\n<details>\n<summary>config.yaml</summary>\n<pre>" +
         html_escape(*run.config_yaml) + "</pre>\n</details>\n</section>\n";
}

constexpr char kStyle[] = R"(body { font-family: system-ui, sans-serif; color: #111827; margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
h2 { border-bottom: 1px solid #d1d5db; padding-bottom: 4px; margin-top: 32px; }
.path { color: #4b5563; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #d1d5db; padding: 4px 10px; text-align: left; }
th { background: #f3f4f6; }
td:nth-child(n+2) { font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 20px; }
svg { max-width: 100%; height: auto; font-size: 12px; }
svg .chart-title { font-size: 14px; font-weight: 600; }
svg .grid { stroke: #e5e7eb; }
svg .frame { fill: none; stroke: #9ca3af; }
svg .tick, svg .axis-label, svg .row-label { fill: #374151; }
svg .cell-value { font-size: 13px; }
.legend { list-style: none; padding: 0; margin: 4px 0 0 72px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.swatch { display: inline-block; width: 14px; height: 4px; margin-right: 6px; vertical-align: middle; }
.chart-row { display: flex; flex-wrap: wrap; gap: 0 16px; }
.missing { color: #92400e; background: #fffbeb; border-left: 4px solid #f59e0b; padding: 6px 10px; }
pre { background: #f9fafb; border: 1px solid #e5e7eb; padding: 12px; overflow-x: auto; }
)";

std::string render_page(const RunData& run) {
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       << "<title>imp run report: " << html_escape(run.name) << "</title>\n<style>\n"
       << kStyle << "</style>\n</head>\n<body>\n"
       << "<header>\n<h1>imp run report: " << html_escape(run.name) << "</h1>\n<p class=\"path\">"
       << html_escape(run.dir.string()) << "</p>\n</header>\n"
       << render_summary(run) << render_training_curves(run) << render_evaluations(run) << render_routing(run)
       << render_expert_load(run) << render_config(run) << "</body>\n</html>\n";
  return html.str();
}

}  // namespace

std::string render_report(const std::string& run_dir) { return render_page(read_run(run_dir)); }

std::string write_report(const std::string& run_dir) {
  const std::string html = render_report(run_dir);
  const fs::path path = fs::path(run_dir) / "report.html";
  // A temporary name in the same directory, so rename() replaces the page in
  // one step and no reader gets a partly written page.
  const fs::path temporary = fs::path(run_dir) / str_cat(".report.html.tmp.", getpid());
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file << html;
    file.close();
    if (!file) {
      std::error_code ignored;
      fs::remove(temporary, ignored);
      throw DataError(str_cat("failed to write ", temporary.string(),
                              "; check that the run directory is writable and the disk has space"));
    }
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw DataError(str_cat("failed to rename ", temporary.string(), " to ", path.string(), ": ", error.message()));
  }
  return path.string();
}

}  // namespace imp
