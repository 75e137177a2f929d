// Parsing, overriding, validating and writing the run configuration.
//
// One table per struct (visit_fields) lists its YAML keys. The same tables
// drive reading, writing and the schema that --set overrides are checked
// against, so a field added to a struct and its table is known everywhere.
#include "imp/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "imp/config/presets.h"
#include "imp/core/error.h"

namespace imp {
namespace {

// ---------------------------------------------------------------------------
// Field tables: every struct field with its YAML key, in output order.

template <typename Visitor>
void visit_fields(Visitor& v, MoeConfig& c) {
  v("num_experts", c.num_experts);
  v("moe_every", c.moe_every);
  v("max_moe_layers", c.max_moe_layers);
  v("router", c.router);
  v("capacity_factor", c.capacity_factor);
  v("top_k", c.top_k);
  v("group_size", c.group_size);
  v("aux_loss_weight", c.aux_loss_weight);
}

template <typename Visitor>
void visit_fields(Visitor& v, VisionConfig& c) {
  v("channels", c.channels);
  v("patch", c.patch);
  v("grid", c.grid);
}

template <typename Visitor>
void visit_fields(Visitor& v, AudioConfig& c) {
  v("sample_rate", c.sample_rate);
  v("window", c.window);
  v("hop", c.hop);
  v("mel_bands", c.mel_bands);
  v("frames", c.frames);
  v("f_min", c.f_min);
  v("f_max", c.f_max);
  v("patch", c.patch);
  v("grid", c.grid);
}

template <typename Visitor>
void visit_fields(Visitor& v, TextConfig& c) {
  v("max_len", c.max_len);
  v("label_max_len", c.label_max_len);
}

template <typename Visitor>
void visit_fields(Visitor& v, ModelConfig& c) {
  v("preset", c.preset);
  v("d_model", c.d_model);
  v("num_layers", c.num_layers);
  v("num_heads", c.num_heads);
  v("mlp_dim", c.mlp_dim);
  v("embed_dim", c.embed_dim);
  v("temperature_init", c.temperature_init);
  v("max_logit_scale", c.max_logit_scale);
  v("moe", c.moe);
  v("vision", c.vision);
  v("audio", c.audio);
  v("text", c.text);
}

template <typename Visitor>
void visit_fields(Visitor& v, TokenizerConfig& c) {
  v("model", c.model);
  v("vocab_size", c.vocab_size);
}

template <typename Visitor>
void visit_fields(Visitor& v, DatasetConfig& c) {
  v("name", c.name);
  v("type", c.type);
  v("root", c.root);
  v("hflip", c.hflip);
  v("max_shift", c.max_shift);
  v("eval_examples", c.eval_examples);
  v("frames", c.frames);
  v("video_frames", c.video_frames);
  v("canvas", c.canvas);
  v("eval_clips", c.eval_clips);
  v("motions", c.motions);
  v("voices", c.voices);
  v("eval_voices", c.eval_voices);
  v("speech_rates", c.speech_rates);
  v("speech_pitches", c.speech_pitches);
  v("renditions", c.renditions);
  v("train", c.train);
  v("test", c.test);
  v("modalities", c.modalities);
  v("image_ext", c.image_ext);
  v("video_ext", c.video_ext);
  v("audio_ext", c.audio_ext);
  v("caption_ext", c.caption_ext);
  v("label_ext", c.label_ext);
  v("label_map", c.label_map);
  v("image_size", c.image_size);
  v("random_resized_crop", c.random_resized_crop);
  v("crop_min_scale", c.crop_min_scale);
  v("video_fps", c.video_fps);
  v("max_megapixels", c.max_megapixels);
  v("decode_timeout", c.decode_timeout);
  v("shuffle_buffer", c.shuffle_buffer);
  v("max_bad_fraction", c.max_bad_fraction);
}

template <typename Visitor>
void visit_fields(Visitor& v, TaskConfig& c) {
  v("name", c.name);
  v("dataset", c.dataset);
  v("modalities", c.modalities);
  v("objective", c.objective);
  v("text", c.text);
  v("label", c.label);
  v("batch_size", c.batch_size);
  v("weight", c.weight);
  v("drop_tokens", c.drop_tokens);
  v("rematerialize", c.rematerialize);
  v("resolution_scale", c.resolution_scale);
  v("variants", c.variants);
}

template <typename Visitor>
void visit_fields(Visitor& v, OptimizerConfig& c) {
  v("lr", c.lr);
  v("end_lr", c.end_lr);
  v("warmup_steps", c.warmup_steps);
  v("weight_decay", c.weight_decay);
  v("beta1", c.beta1);
  v("beta2", c.beta2);
  v("eps", c.eps);
  v("clip_grad_norm", c.clip_grad_norm);
}

template <typename Visitor>
void visit_fields(Visitor& v, TrainConfig& c) {
  v("steps", c.steps);
  v("seed", c.seed);
  v("sampler", c.sampler);
  v("log_every", c.log_every);
  v("threads", c.threads);
  v("workers", c.workers);
  v("prefetch", c.prefetch);
  v("dtype", c.dtype);
  v("checkpoint_every", c.checkpoint_every);
  v("keep_checkpoints", c.keep_checkpoints);
  v("progress", c.progress);
  v("tensorboard", c.tensorboard);
  v("collective_timeout", c.collective_timeout);
  v("cpu_cache_mb", c.cpu_cache_mb);
  v("expert_parallel", c.expert_parallel);
  v("optimizer", c.optimizer);
}

template <typename Visitor>
void visit_fields(Visitor& v, EvalConfig& c) {
  v("batch_size", c.batch_size);
  v("prompts", c.prompts);
  v("recall_at", c.recall_at);
  v("linear_probe_examples", c.linear_probe_examples);
  v("linear_probe_steps", c.linear_probe_steps);
  v("every", c.every);
}

// Leaves out `source`, which records where the YAML came from and is no setting.
template <typename Visitor>
void visit_fields(Visitor& v, Config& c) {
  v("workdir", c.workdir);
  v("cache_dir", c.cache_dir);
  v("model", c.model);
  v("tokenizer", c.tokenizer);
  v("datasets", c.datasets);
  v("tasks", c.tasks);
  v("train", c.train);
  v("eval", c.eval);
}

// ---------------------------------------------------------------------------
// Messages.

// The file being parsed and the key paths that --set overrides wrote, so that
// a message about a value can name the override that set it.
struct Context {
  std::string source;
  std::vector<std::pair<std::string, std::string>> override_paths;  // key path, override text
};

std::string join_key(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string join_index(const std::string& path, std::size_t index) {
  return str_cat(path, "[", index, "]");
}

// Formats {"a", "b", "c"} as "a, b or c".
std::string alternatives(const std::vector<std::string>& choices) {
  std::string text;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) text += (i + 1 == choices.size()) ? " or " : ", ";
    text += choices[i];
  }
  return text;
}

std::string comma_list(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

// Names the override that set `path` or a section above it. The last
// override wins, as it does when the overrides are applied.
std::string origin_note(const Context& ctx, const std::string& path) {
  for (auto it = ctx.override_paths.rbegin(); it != ctx.override_paths.rend(); ++it) {
    const std::string& set_path = it->first;
    const bool below = path.size() > set_path.size() &&
                       path.compare(0, set_path.size(), set_path) == 0 &&
                       (path[set_path.size()] == '.' || path[set_path.size()] == '[');
    if (path == set_path || below) return str_cat(" (set by override '", it->second, "')");
  }
  return "";
}

[[noreturn]] void fail(const Context& ctx, const std::string& path, const std::string& problem) {
  throw ConfigError(str_cat("'", path, "' in ", ctx.source, origin_note(ctx, path), " ", problem));
}

// Describes a YAML value for "found ..." in messages. A quoted scalar is
// described as a string, which tells the reader why "64" in quotes is not
// accepted as a number.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "no value";
    case YAML::NodeType::Scalar:
      return str_cat(node.Tag() == "!" ? "the string '" : "'", node.Scalar(), "'");
    case YAML::NodeType::Sequence:
      if (node.size() == 0) return "an empty list";
      return str_cat("a list of ", node.size(), node.size() == 1 ? " entry" : " entries");
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

// Levenshtein distance extended with swaps of two adjacent characters (the
// optimal string alignment distance), so that a swap such as "trian" for
// "train" costs one edit instead of two.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  // d[i][j] is the distance between the first i characters of a and the first j of b.
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitute = d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, substitute});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// Returns the candidate closest to `key`, or "" when even the closest needs
// more than about one edit per three characters, which is more than a typo.
std::string nearest_key(const std::string& key, const std::vector<std::string>& candidates) {
  const std::size_t max_distance = std::max<std::size_t>(1, key.size() / 3);
  std::string nearest;
  std::size_t nearest_distance = max_distance + 1;
  for (const std::string& candidate : candidates) {
    const std::size_t distance = edit_distance(key, candidate);
    if (distance < nearest_distance) {
      nearest = candidate;
      nearest_distance = distance;
    }
  }
  return nearest;
}

// `where` is the file, or the override and the file.
ConfigError unknown_key_error(const std::string& path, const std::string& where,
                              const std::string& key, const std::vector<std::string>& valid) {
  const std::string message = str_cat("unknown key '", path, "' in ", where);
  const std::string nearest = nearest_key(key, valid);
  if (!nearest.empty()) return ConfigError(str_cat(message, "; did you mean '", nearest, "'?"));
  return ConfigError(str_cat(message, "; valid keys here are ", comma_list(valid)));
}

// ---------------------------------------------------------------------------
// Reading typed values from YAML nodes.

// Numbers and booleans must be plain scalars, so that a quoted "64" is
// reported as a string instead of silently read as a number.
bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

// Parses all of `text` as a number, with an optional leading '+' that
// std::from_chars does not accept itself.
template <typename Number>
std::optional<Number> parse_number(const std::string& text) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (end - begin > 1 && begin[0] == '+' && begin[1] != '-') ++begin;
  Number value{};
  const auto [stop, error] = std::from_chars(begin, end, value);
  if (error != std::errc() || stop != end || begin == end) return std::nullopt;
  return value;
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path, int& value) {
  const auto parsed = is_plain_scalar(node) ? parse_number<int>(node.Scalar()) : std::nullopt;
  if (!parsed) fail(ctx, path, "must be an integer, found " + describe(node));
  value = *parsed;
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                unsigned long long& value) {
  const auto parsed =
      is_plain_scalar(node) ? parse_number<unsigned long long>(node.Scalar()) : std::nullopt;
  if (!parsed) fail(ctx, path, "must be a non-negative integer, found " + describe(node));
  value = *parsed;
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                double& value) {
  const auto parsed = is_plain_scalar(node) ? parse_number<double>(node.Scalar()) : std::nullopt;
  if (!parsed || !std::isfinite(*parsed)) {
    fail(ctx, path, "must be a finite number, found " + describe(node));
  }
  value = *parsed;
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path, bool& value) {
  if (!is_plain_scalar(node) || !YAML::convert<bool>::decode(node, value)) {
    fail(ctx, path, "must be true or false, found " + describe(node));
  }
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                std::string& value) {
  if (!node.IsScalar()) fail(ctx, path, "must be a string, found " + describe(node));
  value = node.Scalar();
}

template <std::size_t N>
void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                std::array<int, N>& values) {
  if (!node.IsSequence() || node.size() != N) {
    fail(ctx, path, str_cat("must be a list of ", N, " integers, found ", describe(node)));
  }
  for (std::size_t i = 0; i < N; ++i) read_value(ctx, node[i], join_index(path, i), values[i]);
}

template <typename Section>
void read_section(const Context& ctx, const YAML::Node& node, const std::string& path,
                  Section& section);

// A list of scalars, or a list of sections such as `tasks`.
template <typename Entry>
void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                std::vector<Entry>& values) {
  if (!node.IsSequence()) {
    const char* expected = std::is_same_v<Entry, int>           ? "a list of integers"
                           : std::is_same_v<Entry, std::string> ? "a list of strings"
                                                                : "a list of maps";
    fail(ctx, path, str_cat("must be ", expected, ", found ", describe(node)));
  }
  values.assign(node.size(), Entry{});
  for (std::size_t i = 0; i < node.size(); ++i) {
    if constexpr (std::is_class_v<Entry> && !std::is_same_v<Entry, std::string>) {
      read_section(ctx, node[i], join_index(path, i), values[i]);
    } else {
      read_value(ctx, node[i], join_index(path, i), values[i]);
    }
  }
}

template <typename Section>
void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                Section& section) {
  read_section(ctx, node, path, section);
}

void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                ModelConfig& model);

// Reads the keys of one map into a section's fields, leaving absent keys at
// their current value, then rejects keys the section does not have.
class SectionReader {
 public:
  SectionReader(const Context& ctx, const YAML::Node& map, std::string path)
      : ctx_(ctx), map_(map), path_(std::move(path)) {}

  template <typename Value>
  void operator()(const char* key, Value& value) {
    known_keys_.push_back(key);
    const YAML::Node node = map_[key];
    if (node) read_value(ctx_, node, join_key(path_, key), value);
  }

  void reject_unknown_keys() const {
    std::set<std::string> seen;
    for (const auto& entry : map_) {
      if (!entry.first.IsScalar()) {
        fail(ctx_, path_, "must have plain keys, found " + describe(entry.first));
      }
      const std::string& key = entry.first.Scalar();
      const std::string key_path = join_key(path_, key);
      // yaml-cpp 0.7 keeps repeated keys and looks up the first, so a later
      // repetition would be ignored without this check.
      if (!seen.insert(key).second) fail(ctx_, key_path, "is given twice");
      if (std::find(known_keys_.begin(), known_keys_.end(), key) == known_keys_.end()) {
        throw unknown_key_error(key_path, ctx_.source + origin_note(ctx_, key_path), key,
                                known_keys_);
      }
    }
  }

 private:
  const Context& ctx_;
  const YAML::Node map_;
  const std::string path_;
  std::vector<std::string> known_keys_;
};

// A section given with no keys (`eval:` alone) keeps all its defaults.
template <typename Section>
void read_section(const Context& ctx, const YAML::Node& node, const std::string& path,
                  Section& section) {
  if (node.IsNull()) return;
  if (!node.IsMap()) fail(ctx, path, "must be a map of keys, found " + describe(node));
  SectionReader reader(ctx, node, path);
  visit_fields(reader, section);
  reader.reject_unknown_keys();
}

const ModelConfig& known_preset(const Context& ctx, const std::string& path,
                                const std::string& name) {
  const std::vector<std::string> names = preset_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    fail(ctx, path, str_cat("must be ", alternatives(names), ", found '", name, "'"));
  }
  return model_preset(name);
}

// The preset is applied first, wherever `preset` appears in the map, so that
// every other key overrides it.
void read_value(const Context& ctx, const YAML::Node& node, const std::string& path,
                ModelConfig& model) {
  if (node.IsMap() && node["preset"]) {
    const std::string preset_path = join_key(path, "preset");
    std::string name;
    read_value(ctx, node["preset"], preset_path, name);
    model = known_preset(ctx, preset_path, name);
  }
  read_section(ctx, node, path, model);
}

// ---------------------------------------------------------------------------
// Writing typed values as YAML nodes.

YAML::Node to_node(int value) { return YAML::Node(value); }
YAML::Node to_node(unsigned long long value) { return YAML::Node(value); }
YAML::Node to_node(bool value) { return YAML::Node(value); }
YAML::Node to_node(const std::string& value) { return YAML::Node(value); }

// Shortest text that reads back to the same double, e.g. 0.1 rather than
// 0.10000000000000001.
YAML::Node to_node(double value) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, result.ptr);
  if (text.find_first_not_of("-0123456789") == std::string::npos) text += ".0";
  return YAML::Node(text);
}

template <typename Scalar>
YAML::Node flow_list(const Scalar* begin, const Scalar* end) {
  YAML::Node list(YAML::NodeType::Sequence);
  for (const Scalar* it = begin; it != end; ++it) list.push_back(to_node(*it));
  list.SetStyle(YAML::EmitterStyle::Flow);
  return list;
}

template <std::size_t N>
YAML::Node to_node(const std::array<int, N>& values) {
  return flow_list(values.data(), values.data() + N);
}

YAML::Node to_node(const std::vector<int>& values) {
  return flow_list(values.data(), values.data() + values.size());
}

YAML::Node to_node(const std::vector<std::string>& values) {
  return flow_list(values.data(), values.data() + values.size());
}

template <typename Section>
YAML::Node to_node(const Section& section);

template <typename Section>
YAML::Node to_node(const std::vector<Section>& sections) {
  YAML::Node list(YAML::NodeType::Sequence);
  for (const Section& section : sections) list.push_back(to_node(section));
  return list;
}

class NodeWriter {
 public:
  template <typename Value>
  void operator()(const char* key, const Value& value) {
    map_[key] = to_node(value);
  }
  const YAML::Node& node() const { return map_; }

 private:
  YAML::Node map_{YAML::NodeType::Map};
};

template <typename Section>
YAML::Node to_node(const Section& section) {
  // The field tables take mutable structs, so that reading can share them.
  Section copy = section;
  NodeWriter writer;
  visit_fields(writer, copy);
  return writer.node();
}

// ---------------------------------------------------------------------------
// Overrides ("key.path=value"), applied to the YAML tree before typed parsing.

struct Override {
  std::string text;               // as given, for messages
  std::vector<std::string> keys;  // the dotted key path, split
  YAML::Node value;
};

std::string override_where(const Context& ctx, const Override& setting) {
  return str_cat("override '", setting.text, "' for ", ctx.source);
}

std::vector<std::string> split_keys(const std::string& key_path) {
  std::vector<std::string> keys;
  std::istringstream stream(key_path);
  for (std::string key; std::getline(stream, key, '.');) keys.push_back(key);
  if (!key_path.empty() && key_path.back() == '.') keys.emplace_back();
  return keys;
}

// An empty value means the empty string, so `tokenizer.model=` clears a path.
YAML::Node parse_override_value(const Context& ctx, const std::string& text,
                                const std::string& value_text) {
  if (value_text.empty()) return YAML::Node(std::string());
  try {
    return YAML::Load(value_text);
  } catch (const YAML::Exception& error) {
    throw ConfigError(str_cat("override '", text, "' for ", ctx.source,
                              " has a value that is not valid YAML: ", error.msg));
  }
}

Override parse_override(const Context& ctx, const std::string& text) {
  const std::size_t equals = text.find('=');
  if (equals == std::string::npos) {
    throw ConfigError(str_cat("override '", text, "' for ", ctx.source,
                              " has no '='; write it as key=value, e.g. train.steps=200"));
  }
  Override setting{text, split_keys(text.substr(0, equals)), {}};
  const bool empty_key = std::any_of(setting.keys.begin(), setting.keys.end(),
                                     [](const std::string& key) { return key.empty(); });
  if (setting.keys.empty() || empty_key) {
    throw ConfigError(
        str_cat("override '", text, "' for ", ctx.source,
                " has an invalid key; write a dotted path such as model.moe.num_experts"));
  }
  setting.value = parse_override_value(ctx, text, text.substr(equals + 1));
  return setting;
}

// Returns a default Config as YAML, the shape overrides are checked against.
// Each list of sections gets one entry so that the keys of an entry are known.
YAML::Node config_schema() {
  Config config;
  config.datasets.emplace_back();
  config.tasks.emplace_back();
  return to_node(config);
}

bool is_section_list(const YAML::Node& schema) {
  return schema.IsSequence() && schema.size() > 0 && schema[0].IsMap();
}

std::vector<std::string> schema_keys(const YAML::Node& schema) {
  std::vector<std::string> keys;
  for (const auto& entry : schema) keys.push_back(entry.first.Scalar());
  return keys;
}

std::string user_key_path(const Override& setting, std::size_t depth) {
  std::string path;
  for (std::size_t i = 0; i <= depth; ++i) path = join_key(path, setting.keys[i]);
  return path;
}

bool is_index(const std::string& text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Finds the entry of a list of sections that setting.keys[depth] names,
// matching the entries' `name` first and their index second.
std::size_t find_entry(const Context& ctx, const Override& setting, std::size_t depth,
                       const YAML::Node& list, const std::string& list_path) {
  const std::string& requested = setting.keys[depth];
  std::vector<std::string> names;
  const std::size_t size = (list && list.IsSequence()) ? list.size() : 0;
  for (std::size_t i = 0; i < size; ++i) {
    const YAML::Node name = list[i].IsMap() ? list[i]["name"] : YAML::Node();
    if (!name || !name.IsScalar()) continue;
    if (name.Scalar() == requested) return i;
    names.push_back(name.Scalar());
  }
  if (is_index(requested)) {
    const auto index = parse_number<std::size_t>(requested);
    if (index && *index < size) return *index;
  }
  // "tasks" -> "task", "datasets" -> "dataset".
  const std::string noun = list_path.substr(0, list_path.size() - 1);
  const std::string defined = names.empty()
                                  ? str_cat("no ", list_path, " are defined")
                                  : str_cat("defined ", list_path, " are ", comma_list(names));
  throw ConfigError(str_cat(override_where(ctx, setting), " names ", noun, " '", requested,
                            "', which is not defined; ", defined));
}

// Makes node[key] a map, creating it when absent, so an override can set a
// key that the file leaves out.
void ensure_map(const Context& ctx, YAML::Node node, const std::string& key,
                const std::string& path) {
  const YAML::Node& view = node;  // const access does not insert the key
  const YAML::Node child = view[key];
  if (!child || child.IsNull()) {
    node[key] = YAML::Node(YAML::NodeType::Map);
    return;
  }
  if (!child.IsMap()) fail(ctx, path, "must be a map of keys, found " + describe(child));
}

std::string assign_in_entry(const Context& ctx, const Override& setting, std::size_t depth,
                            YAML::Node list, const YAML::Node& entry_schema,
                            const std::string& list_path);

// Follows setting.keys from depth on, starting at `node` (the section at `path`,
// shaped like `schema`), and sets the last key. Returns the key path set, in
// the form validation messages use, e.g. tasks[0].batch_size.
std::string assign_override(const Context& ctx, const Override& setting, std::size_t depth,
                            YAML::Node node, const YAML::Node& schema, const std::string& path) {
  const std::string& key = setting.keys[depth];
  const std::string key_path = join_key(path, key);
  const YAML::Node key_schema = schema[key];
  if (!key_schema) {
    throw unknown_key_error(user_key_path(setting, depth), override_where(ctx, setting), key,
                            schema_keys(schema));
  }
  if (depth + 1 == setting.keys.size()) {
    node[key] = setting.value;
    return key_path;
  }
  if (is_section_list(key_schema)) {
    const YAML::Node& view = node;
    return assign_in_entry(ctx, setting, depth + 1, view[key], key_schema[0], key_path);
  }
  if (!key_schema.IsMap()) {
    throw ConfigError(str_cat(override_where(ctx, setting), " sets a key below '", key_path,
                              "', which takes a whole value; write it as ", key_path, "=VALUE"));
  }
  ensure_map(ctx, node, key, key_path);
  return assign_override(ctx, setting, depth + 1, node[key], key_schema, key_path);
}

std::string assign_in_entry(const Context& ctx, const Override& setting, std::size_t depth,
                            YAML::Node list, const YAML::Node& entry_schema,
                            const std::string& list_path) {
  const std::size_t index = find_entry(ctx, setting, depth, list, list_path);
  const std::string entry_path = join_index(list_path, index);
  if (depth + 1 == setting.keys.size()) {
    list[index] = setting.value;
    return entry_path;
  }
  const YAML::Node& view = list;
  if (!view[index].IsMap()) {
    fail(ctx, entry_path, "must be a map of keys, found " + describe(view[index]));
  }
  return assign_override(ctx, setting, depth + 1, list[index], entry_schema, entry_path);
}

void apply_overrides(Context& ctx, YAML::Node root, const std::vector<std::string>& overrides) {
  const YAML::Node schema = config_schema();
  for (const std::string& text : overrides) {
    const Override setting = parse_override(ctx, text);
    const std::string path = assign_override(ctx, setting, 0, root, schema, "");
    ctx.override_paths.emplace_back(path, text);
  }
}

// ---------------------------------------------------------------------------
// Validation of values that parsed with the right types.

template <typename Number>
void check_positive(const Context& ctx, const std::string& path, Number value) {
  if (!(value > 0)) fail(ctx, path, str_cat("must be positive, found ", value));
}

template <typename Number>
void check_non_negative(const Context& ctx, const std::string& path, Number value) {
  if (!(value >= 0)) fail(ctx, path, str_cat("must be zero or positive, found ", value));
}

void check_one_of(const Context& ctx, const std::string& path, const std::string& value,
                  const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), value) == choices.end()) {
    fail(ctx, path, str_cat("must be ", alternatives(choices), ", found '", value, "'"));
  }
}

void check_not_empty(const Context& ctx, const std::string& path, const std::string& value) {
  if (value.empty()) fail(ctx, path, "must not be empty");
}

template <std::size_t N>
void check_all_positive(const Context& ctx, const std::string& path,
                        const std::array<int, N>& values) {
  for (std::size_t i = 0; i < N; ++i) check_positive(ctx, join_index(path, i), values[i]);
}

void validate_moe(const Context& ctx, const MoeConfig& moe) {
  check_non_negative(ctx, "model.moe.num_experts", moe.num_experts);
  check_positive(ctx, "model.moe.moe_every", moe.moe_every);
  check_non_negative(ctx, "model.moe.max_moe_layers", moe.max_moe_layers);
  check_one_of(ctx, "model.moe.router", moe.router, {"experts_choose", "token_choice"});
  check_positive(ctx, "model.moe.capacity_factor", moe.capacity_factor);
  check_positive(ctx, "model.moe.top_k", moe.top_k);
  if (moe.num_experts > 0 && moe.top_k > moe.num_experts) {
    fail(ctx, "model.moe.top_k",
         str_cat("must be between 1 and model.moe.num_experts (", moe.num_experts, "), found ",
                 moe.top_k));
  }
  check_positive(ctx, "model.moe.group_size", moe.group_size);
  check_non_negative(ctx, "model.moe.aux_loss_weight", moe.aux_loss_weight);
}

void validate_audio(const Context& ctx, const AudioConfig& audio) {
  check_positive(ctx, "model.audio.sample_rate", audio.sample_rate);
  check_positive(ctx, "model.audio.window", audio.window);
  check_positive(ctx, "model.audio.hop", audio.hop);
  check_positive(ctx, "model.audio.mel_bands", audio.mel_bands);
  check_positive(ctx, "model.audio.frames", audio.frames);
  check_non_negative(ctx, "model.audio.f_min", audio.f_min);
  const double nyquist = audio.sample_rate / 2.0;
  const double f_max = audio.f_max > 0 ? audio.f_max : nyquist;
  if (f_max > nyquist) {
    fail(ctx, "model.audio.f_max",
         str_cat("is above half the sample rate (", nyquist, " Hz), found ", audio.f_max));
  }
  if (audio.f_min >= f_max) {
    fail(ctx, "model.audio.f_min", str_cat("must be below f_max (", f_max, " Hz), found ", audio.f_min));
  }
  check_all_positive(ctx, "model.audio.patch", audio.patch);
  check_all_positive(ctx, "model.audio.grid", audio.grid);
  if (audio.patch[0] > 0 && audio.mel_bands % audio.patch[0] != 0) {
    fail(ctx, "model.audio.patch",
         str_cat("must divide the spectrogram: patch[0] = ", audio.patch[0],
                 " does not divide model.audio.mel_bands = ", audio.mel_bands));
  }
  if (audio.patch[1] > 0 && audio.frames % audio.patch[1] != 0) {
    fail(ctx, "model.audio.patch",
         str_cat("must divide the spectrogram: patch[1] = ", audio.patch[1],
                 " does not divide model.audio.frames = ", audio.frames));
  }
}

void validate_model(const Context& ctx, const ModelConfig& model) {
  check_positive(ctx, "model.d_model", model.d_model);
  check_positive(ctx, "model.num_layers", model.num_layers);
  check_positive(ctx, "model.num_heads", model.num_heads);
  if (model.d_model % model.num_heads != 0) {
    fail(ctx, "model.d_model",
         str_cat("must be divisible by model.num_heads (", model.num_heads, "), found ",
                 model.d_model));
  }
  check_positive(ctx, "model.mlp_dim", model.mlp_dim);
  check_positive(ctx, "model.embed_dim", model.embed_dim);
  check_positive(ctx, "model.temperature_init", model.temperature_init);
  check_positive(ctx, "model.max_logit_scale", model.max_logit_scale);
  validate_moe(ctx, model.moe);
  check_positive(ctx, "model.vision.channels", model.vision.channels);
  check_all_positive(ctx, "model.vision.patch", model.vision.patch);
  check_all_positive(ctx, "model.vision.grid", model.vision.grid);
  validate_audio(ctx, model.audio);
  check_positive(ctx, "model.text.max_len", model.text.max_len);
  check_positive(ctx, "model.text.label_max_len", model.text.label_max_len);
}

void validate_tokenizer(const Context& ctx, const TokenizerConfig& tokenizer) {
  if (!tokenizer.model.empty() && !std::filesystem::is_regular_file(tokenizer.model)) {
    fail(ctx, "tokenizer.model",
         str_cat("names a file that does not exist: ", tokenizer.model,
                 ". Give the path of a SentencePiece .model file, or leave "
                 "it empty to train one on the captions."));
  }
  check_positive(ctx, "tokenizer.vocab_size", tokenizer.vocab_size);
}

void check_dataset_root(const Context& ctx, const std::string& path, const DatasetConfig& dataset) {
  if (std::filesystem::is_directory(dataset.root)) return;
  const std::string hint =
      dataset.root == DatasetConfig{}.root
          ? str_cat(
                "Install Debian's dataset-fashion-mnist package (apt-get install "
                "dataset-fashion-mnist), or set ",
                path,
                " to a folder with the "
                "Fashion-MNIST idx files.")
          : "Set it to a folder with the Fashion-MNIST idx files.";
  fail(ctx, path, str_cat("is not an existing directory: ", dataset.root, ". ", hint));
}

void validate_video(const Context& ctx, const std::string& path, const DatasetConfig& dataset) {
  check_positive(ctx, path + ".frames", dataset.frames);
  check_positive(ctx, path + ".video_frames", dataset.video_frames);
  if (dataset.frames > dataset.video_frames) {
    fail(ctx, path + ".frames",
         str_cat("must not exceed video_frames (", dataset.video_frames, "), found ",
                 dataset.frames));
  }
  if (dataset.canvas < 28) {
    fail(ctx, path + ".canvas",
         str_cat("must be at least 28, the side of a Fashion-MNIST image, found ", dataset.canvas));
  }
  check_positive(ctx, path + ".eval_clips", dataset.eval_clips);
  if (dataset.motions.empty()) fail(ctx, path + ".motions", "must list at least one motion");
  const std::vector<std::string> known = DatasetConfig{}.motions;
  for (std::size_t i = 0; i < dataset.motions.size(); ++i) {
    check_one_of(ctx, join_index(path + ".motions", i), dataset.motions[i], known);
    for (std::size_t j = 0; j < i; ++j) {
      if (dataset.motions[j] == dataset.motions[i]) {
        fail(ctx, join_index(path + ".motions", i), "repeats '" + dataset.motions[i] + "'");
      }
    }
  }
}

void validate_speech(const Context& ctx, const std::string& path, const DatasetConfig& dataset) {
  if (dataset.voices.empty()) fail(ctx, path + ".voices", "must list at least one voice");
  if (dataset.eval_voices.empty()) {
    fail(ctx, path + ".eval_voices", "must list at least one voice for the test split");
  }
  for (std::size_t i = 0; i < dataset.eval_voices.size(); ++i) {
    const std::string& voice = dataset.eval_voices[i];
    check_not_empty(ctx, join_index(path + ".eval_voices", i), voice);
    if (std::find(dataset.voices.begin(), dataset.voices.end(), voice) != dataset.voices.end()) {
      fail(ctx, join_index(path + ".eval_voices", i),
           str_cat("'", voice, "' is also a training voice in ", path,
                   ".voices; test audio must come from voices never heard in training"));
    }
  }
  for (std::size_t i = 0; i < dataset.voices.size(); ++i) {
    check_not_empty(ctx, join_index(path + ".voices", i), dataset.voices[i]);
  }
  if (dataset.speech_rates.empty()) fail(ctx, path + ".speech_rates", "must list at least one rate");
  for (std::size_t i = 0; i < dataset.speech_rates.size(); ++i) {
    const int rate = dataset.speech_rates[i];
    if (rate < 80 || rate > 450) {
      fail(ctx, join_index(path + ".speech_rates", i),
           str_cat("must be in [80, 450] words per minute (eSpeak's range), found ", rate));
    }
  }
  if (dataset.speech_pitches.empty()) {
    fail(ctx, path + ".speech_pitches", "must list at least one pitch");
  }
  for (std::size_t i = 0; i < dataset.speech_pitches.size(); ++i) {
    const int pitch = dataset.speech_pitches[i];
    if (pitch < 0 || pitch > 100) {
      fail(ctx, join_index(path + ".speech_pitches", i),
           str_cat("must be in [0, 100], found ", pitch));
    }
  }
  check_positive(ctx, path + ".renditions", dataset.renditions);
}

// The keys of webdataset and manifest datasets.
void validate_files(const Context& ctx, const std::string& path, const DatasetConfig& dataset) {
  const bool shards = dataset.type == "webdataset";
  const char* expected = shards ? "tar shards or brace patterns such as "
                                  "shards/train-{000000..000009}.tar"
                                : "one manifest file (.csv or .jsonl)";
  if (dataset.train.empty()) fail(ctx, path + ".train", str_cat("must name ", expected));
  if (!shards && dataset.train.size() != 1) {
    fail(ctx, path + ".train", "must name exactly one manifest file (.csv or .jsonl)");
  }
  if (!shards && dataset.test.size() > 1) {
    fail(ctx, path + ".test", "must name at most one manifest file (.csv or .jsonl)");
  }
  for (std::size_t i = 0; i < dataset.modalities.size(); ++i) {
    check_one_of(ctx, join_index(path + ".modalities", i), dataset.modalities[i],
                 {"image", "video", "audio"});
  }
  for (std::size_t i = 0; i < 2; ++i) {
    check_non_negative(ctx, join_index(path + ".image_size", i), dataset.image_size[i]);
  }
  if (!(dataset.crop_min_scale > 0.0 && dataset.crop_min_scale <= 1.0)) {
    fail(ctx, path + ".crop_min_scale",
         str_cat("must be in (0, 1], found ", dataset.crop_min_scale));
  }
  check_non_negative(ctx, path + ".video_fps", dataset.video_fps);
  check_positive(ctx, path + ".frames", dataset.frames);
  check_positive(ctx, path + ".eval_clips", dataset.eval_clips);
  check_positive(ctx, path + ".max_megapixels", dataset.max_megapixels);
  check_positive(ctx, path + ".decode_timeout", dataset.decode_timeout);
  check_positive(ctx, path + ".shuffle_buffer", dataset.shuffle_buffer);
  if (!(dataset.max_bad_fraction >= 0.0 && dataset.max_bad_fraction <= 1.0)) {
    fail(ctx, path + ".max_bad_fraction",
         str_cat("must be in [0, 1], found ", dataset.max_bad_fraction));
  }
}

void validate_datasets(const Context& ctx, const std::vector<DatasetConfig>& datasets) {
  for (std::size_t i = 0; i < datasets.size(); ++i) {
    const std::string path = join_index("datasets", i);
    const DatasetConfig& dataset = datasets[i];
    check_not_empty(ctx, path + ".name", dataset.name);
    for (std::size_t j = 0; j < i; ++j) {
      if (datasets[j].name == dataset.name) {
        fail(ctx, path + ".name",
             str_cat("repeats the name '", dataset.name, "' of datasets[", j, "]"));
      }
    }
    check_one_of(ctx, path + ".type", dataset.type,
                 {"fashion_mnist", "moving_fashion_mnist", "spoken_fashion_mnist", "webdataset",
                  "manifest"});
    if (dataset.type == "webdataset" || dataset.type == "manifest") {
      validate_files(ctx, path, dataset);
      continue;
    }
    check_dataset_root(ctx, path + ".root", dataset);
    check_non_negative(ctx, path + ".eval_examples", dataset.eval_examples);
    check_non_negative(ctx, path + ".max_shift", dataset.max_shift);
    if (dataset.max_shift != 0 && dataset.type != "fashion_mnist") {
      fail(ctx, path + ".max_shift",
           str_cat("applies only to fashion_mnist datasets, and this one is ", dataset.type,
                   "; remove it or set it to 0"));
    }
    if (dataset.max_shift >= 14) {
      fail(ctx, path + ".max_shift",
           str_cat("must be below 14, half the side of a Fashion-MNIST image, found ",
                   dataset.max_shift));
    }
    if (dataset.type == "moving_fashion_mnist") validate_video(ctx, path, dataset);
    if (dataset.type != "fashion_mnist") validate_speech(ctx, path, dataset);
  }
}

void check_dataset_exists(const Context& ctx, const std::string& path, const std::string& name,
                          const std::vector<DatasetConfig>& datasets) {
  std::vector<std::string> names;
  for (const DatasetConfig& dataset : datasets) {
    if (dataset.name == name) return;
    names.push_back(dataset.name);
  }
  const std::string defined =
      names.empty() ? "no datasets are defined" : "defined datasets are " + comma_list(names);
  if (name.empty()) fail(ctx, path, "must name a dataset; " + defined);
  fail(ctx, path,
       str_cat("names dataset '", name, "', which is not defined under 'datasets'; ", defined));
}

// An nce task contrasts two modalities, and a classification task
// (softmax_ce, sigmoid_bce) classifies one.
void check_modalities(const Context& ctx, const std::string& path, const TaskConfig& task) {
  const std::string modalities_path = path + ".modalities";
  for (std::size_t j = 0; j < task.modalities.size(); ++j) {
    const std::string modality_path = join_index(modalities_path, j);
    check_one_of(ctx, modality_path, task.modalities[j], {"image", "video", "audio", "text"});
    for (std::size_t k = 0; k < j; ++k) {
      if (task.modalities[k] == task.modalities[j]) {
        fail(ctx, modality_path, "repeats '" + task.modalities[j] + "'");
      }
    }
  }
  const std::size_t expected = task.objective == "nce" ? 2 : 1;
  if (task.modalities.size() != expected) {
    fail(ctx, modalities_path,
         str_cat("must name exactly ", expected == 2 ? "two modalities" : "one modality",
                 " for objective ", task.objective, ", found ", task.modalities.size()));
  }
  if (task.modalities[0] == "text") {
    fail(ctx, join_index(modalities_path, 0),
         task.objective == "nce"
             ? "is text, which goes second in an nce pair, as in [video, text]"
             : str_cat("is text, which objective ", task.objective,
                       " cannot classify; classify image, video or audio"));
  }
}

void validate_task(const Context& ctx, const std::string& path, const TaskConfig& task,
                   const std::vector<DatasetConfig>& datasets) {
  check_not_empty(ctx, path + ".name", task.name);
  check_dataset_exists(ctx, path + ".dataset", task.dataset, datasets);
  check_one_of(ctx, path + ".objective", task.objective, {"softmax_ce", "sigmoid_bce", "nce"});
  check_modalities(ctx, path, task);
  check_one_of(ctx, path + ".text", task.text, {"caption", "label"});
  check_positive(ctx, path + ".batch_size", task.batch_size);
}

void validate_tasks(const Context& ctx, const Config& config) {
  if (config.tasks.empty()) {
    throw ConfigError(
        str_cat(ctx.source, " defines no tasks; add at least one entry under 'tasks'"));
  }
  for (std::size_t i = 0; i < config.tasks.size(); ++i) {
    const std::string path = join_index("tasks", i);
    validate_task(ctx, path, config.tasks[i], config.datasets);
    const double drop = config.tasks[i].drop_tokens;
    if (!(drop >= 0.0 && drop < 1.0)) {
      fail(ctx, path + ".drop_tokens", str_cat("must be in [0, 1), found ", drop));
    }
    check_positive(ctx, path + ".resolution_scale", config.tasks[i].resolution_scale);
    check_one_of(ctx, path + ".variants", config.tasks[i].variants, {"none", "method"});
    const std::string& first = config.tasks[i].modalities.empty() ? "" : config.tasks[i].modalities[0];
    if (config.tasks[i].variants == "method" && first != "image" && first != "video") {
      fail(ctx, path + ".variants", str_cat("applies to image and video tasks, and this one's first "
                                            "modality is '", first, "'; set it to none"));
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (config.tasks[j].name == config.tasks[i].name) {
        fail(ctx, path + ".name",
             str_cat("repeats the name '", config.tasks[i].name, "' of tasks[", j, "]"));
      }
    }
  }
}

void validate_optimizer(const Context& ctx, const OptimizerConfig& optimizer) {
  check_positive(ctx, "train.optimizer.lr", optimizer.lr);
  check_non_negative(ctx, "train.optimizer.end_lr", optimizer.end_lr);
  check_non_negative(ctx, "train.optimizer.warmup_steps", optimizer.warmup_steps);
  check_non_negative(ctx, "train.optimizer.weight_decay", optimizer.weight_decay);
  for (const auto& [key, beta] :
       {std::pair{"beta1", optimizer.beta1}, std::pair{"beta2", optimizer.beta2}}) {
    if (!(beta >= 0.0 && beta < 1.0)) {
      fail(ctx, str_cat("train.optimizer.", key), str_cat("must be in [0, 1), found ", beta));
    }
  }
  check_positive(ctx, "train.optimizer.eps", optimizer.eps);
  check_non_negative(ctx, "train.optimizer.clip_grad_norm", optimizer.clip_grad_norm);
}

void validate_train(const Context& ctx, const TrainConfig& train) {
  check_positive(ctx, "train.steps", train.steps);
  check_one_of(ctx, "train.sampler", train.sampler, {"multinomial", "round_robin"});
  check_positive(ctx, "train.log_every", train.log_every);
  check_non_negative(ctx, "train.threads", train.threads);
  check_non_negative(ctx, "train.workers", train.workers);
  check_positive(ctx, "train.prefetch", train.prefetch);
  check_one_of(ctx, "train.dtype", train.dtype, {"fp32", "bf16"});
  check_non_negative(ctx, "train.checkpoint_every", train.checkpoint_every);
  check_positive(ctx, "train.keep_checkpoints", train.keep_checkpoints);
  check_one_of(ctx, "train.progress", train.progress, {"auto", "live", "lines"});
  check_positive(ctx, "train.collective_timeout", train.collective_timeout);
  if (train.cpu_cache_mb < -1) {
    fail(ctx, "train.cpu_cache_mb",
         str_cat("must be -1 (a quarter of this machine's memory), 0 (no cache) or a size in MiB, found ",
                 train.cpu_cache_mb));
  }
  validate_optimizer(ctx, train.optimizer);
}

void validate_eval(const Context& ctx, const EvalConfig& eval) {
  check_positive(ctx, "eval.batch_size", eval.batch_size);
  check_non_negative(ctx, "eval.every", eval.every);
  for (std::size_t i = 0; i < eval.prompts.size(); ++i) {
    if (eval.prompts[i].find("{}") == std::string::npos) {
      fail(ctx, join_index("eval.prompts", i),
           str_cat("must contain {} where the class name goes, found '", eval.prompts[i], "'"));
    }
  }
  for (std::size_t i = 0; i < eval.recall_at.size(); ++i) {
    check_positive(ctx, join_index("eval.recall_at", i), eval.recall_at[i]);
  }
  check_positive(ctx, "eval.linear_probe_examples", eval.linear_probe_examples);
  check_positive(ctx, "eval.linear_probe_steps", eval.linear_probe_steps);
}

void validate(const Context& ctx, const Config& config) {
  check_not_empty(ctx, "workdir", config.workdir);
  check_not_empty(ctx, "cache_dir", config.cache_dir);
  validate_model(ctx, config.model);
  validate_tokenizer(ctx, config.tokenizer);
  validate_datasets(ctx, config.datasets);
  validate_tasks(ctx, config);
  validate_train(ctx, config.train);
  validate_eval(ctx, config.eval);
}

// ---------------------------------------------------------------------------
// Whole documents.

YAML::Node load_yaml(const std::string& yaml_text, const std::string& source) {
  try {
    YAML::Node root = YAML::Load(yaml_text);
    // An empty file is a config with every key at its default.
    if (root.IsNull()) return YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) {
      throw ConfigError(str_cat(source,
                                " must contain a map of sections (model, tasks, ...) at "
                                "the top level, found ",
                                describe(root)));
    }
    return root;
  } catch (const YAML::ParserException& error) {
    if (error.mark.is_null()) throw ConfigError(str_cat(source, " is not valid YAML: ", error.msg));
    throw ConfigError(str_cat(source, " is not valid YAML: ", error.msg, " at line ",
                              error.mark.line + 1, ", column ", error.mark.column + 1));
  }
}

Config read_config(const Context& ctx, const YAML::Node& root) {
  Config config;
  config.source = ctx.source;
  // The default preset applies even when the file has no `model` section.
  config.model = model_preset(config.model.preset);
  read_section(ctx, root, "", config);
  return config;
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides) {
  Context ctx{source, {}};
  try {
    YAML::Node root = load_yaml(yaml_text, source);
    apply_overrides(ctx, root, overrides);
    Config config = read_config(ctx, root);
    validate(ctx, config);
    return config;
  } catch (const YAML::Exception& error) {
    // The readers check each node's type before converting it, so this is a
    // last resort that keeps yaml-cpp's exception type away from callers.
    throw ConfigError(str_cat("failed to read ", source, ": ", error.what()));
  }
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (!std::filesystem::exists(path)) throw ConfigError(str_cat("config file not found: ", path));
  if (!std::filesystem::is_regular_file(path)) {
    throw ConfigError(str_cat("config path is not a regular file: ", path));
  }
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file) throw ConfigError(str_cat("failed to read config file ", path));
  return parse_config(text.str(), path, overrides);
}

std::string to_yaml(const Config& config) {
  YAML::Emitter out;
  out << to_node(config);
  return std::string(out.c_str()) + "\n";
}

std::string string_override(const std::string& key, const std::string& value) {
  std::string quoted;
  for (char c : value) quoted += c == '\'' ? std::string("''") : std::string(1, c);
  return key + "='" + quoted + "'";
}

}  // namespace imp
