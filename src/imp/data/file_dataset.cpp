#include "imp/data/file_dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <opencv2/core/utility.hpp>

#include "imp/audio/log_mel.h"
#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/core/utf8.h"
#include "imp/data/captions.h"
#include "imp/data/manifest.h"
#include "imp/data/speech_bank.h"
#include "imp/io/audio_decoder.h"
#include "imp/io/decode_error.h"
#include "imp/io/image_decoder.h"
#include "imp/io/tar_shard.h"
#include "imp/io/video_decoder.h"

namespace fs = std::filesystem;

namespace imp {
namespace {

constexpr const char* kImageModality = "image";
constexpr const char* kVideoModality = "video";
constexpr const char* kAudioModality = "audio";

bool contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::optional<int64_t> parse_index(const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  if (result.ec != std::errc() || result.ptr != end || value < 0) return std::nullopt;
  return value;
}

std::string read_whole_file(const std::string& path, const std::string& modality,
                            const std::string& sample) {
  std::ifstream file(path, std::ios::binary);
  IMP_REQUIRE_DECODE(file.good(), modality + ": cannot open", sample, ": cannot open ", path,
                     "; check that the file exists and is readable");
  std::ostringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

}  // namespace

std::string read_sample_source(const SampleSource& source, const std::string& modality,
                               const std::string& sample) {
  if (!source.in_shard) return read_whole_file(source.path, modality, sample);
  TarMember member;
  member.offset = source.offset;
  member.size = source.size;
  member.name = sample + "." + source.extension;
  return read_member(source.path, member);
}

namespace {

const uint8_t* bytes(const std::string& data) {
  return reinterpret_cast<const uint8_t*>(data.data());
}

// Normalised log-mel spectrogram [M, F] of mono samples at the model's rate.
at::Tensor spectrogram(const std::vector<float>& samples, const AudioConfig& audio) {
  at::Tensor wave = at::from_blob(const_cast<float*>(samples.data()),
                                  {static_cast<int64_t>(samples.size())}, at::kFloat)
                        .clone();
  return normalize_spectrogram(log_mel_spectrogram(wave, audio));
}

// A stable fingerprint of the train split's files: paths, sizes and
// modification times. The derived class list is cached under it.
std::string files_fingerprint(const std::vector<std::string>& paths, const std::string& type) {
  uint64_t h = hash_name(type);
  for (const std::string& path : paths) {
    struct stat st {};
    const bool found = ::stat(path.c_str(), &st) == 0;
    h = mix64(h, hash_name(path));
    h = mix64(h, found ? static_cast<uint64_t>(st.st_size) : ~0ULL);
    h = mix64(h, found ? static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000007ULL +
                             static_cast<uint64_t>(st.st_mtim.tv_nsec)
                       : 0ULL);
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

std::vector<std::string> expand_all(const std::vector<std::string>& patterns) {
  std::vector<std::string> paths;
  for (const std::string& pattern : patterns) {
    for (std::string& path : expand_braces(pattern)) paths.push_back(std::move(path));
  }
  return paths;
}

void write_lines_atomically(const fs::path& path, const std::vector<std::string>& lines) {
  fs::create_directories(path.parent_path());
  const fs::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    for (const std::string& line : lines) out << line << '\n';
    IMP_REQUIRE(DataError, out.good(), "cannot write ", temporary.string(),
                "; check that cache_dir is writable");
  }
  fs::rename(temporary, path);
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  IMP_REQUIRE(DataError, in.good(), "cannot open the label map ", path,
              "; it must list one class name per line");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    line = trim(to_valid_utf8(line));
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

}  // namespace

FileDataset::FileDataset(const DatasetConfig& config, const ModelConfig& model, Options options)
    : Dataset(config.name),
      source_(!options.description.empty()
                  ? options.description
                  : str_cat("dataset '", config.name, "' (", options.train ? "train" : "test", ")")),
      config_(config),
      audio_(model.audio),
      channels_(model.vision.channels),
      train_(options.train),
      rank_(options.rank),
      world_size_(options.world_size),
      log_(options.log),
      remember_classes_(options.remember_classes) {
  // Batches are built by the prefetcher's worker threads, one sample at a
  // time, next to LibTorch's own threads: OpenCV's resize and colour
  // conversion must not start a thread pool of their own on top.
  static std::once_flag opencv_threads;
  std::call_once(opencv_threads, [] { cv::setNumThreads(1); });
  height_ = config.image_size[0] > 0 ? config.image_size[0] : model.vision.grid[1] * model.vision.patch[1];
  width_ = config.image_size[1] > 0 ? config.image_size[1] : model.vision.grid[2] * model.vision.patch[2];
  const std::vector<std::string>& split = train_ ? config.train : config.test;
  IMP_REQUIRE(ConfigError, !split.empty(), source_, ": datasets.", config.name,
              train_ ? ".train" : ".test", " names no data; list ",
              config.type == "webdataset" ? "tar shards" : "a manifest file", " there");
  if (config.type == "webdataset") {
    index_shards(split);
  } else {
    index_manifest(split.at(0));
  }

  // Modalities: as configured, or every one some sample has.
  if (!config.modalities.empty()) {
    modalities_ = config.modalities;
  } else {
    for (const char* modality : {kImageModality, kVideoModality, kAudioModality}) {
      for (const FileSample& sample : samples_) {
        if (sample.sources.count(modality)) {
          modalities_.push_back(modality);
          break;
        }
      }
    }
  }
  IMP_REQUIRE(DataError, !samples_.empty(), source_, ": no samples found in ",
              str_cat(split.size(), " source(s), starting with ", split.front()),
              "; check the paths and, for shards, the member extensions (image_ext, video_ext, "
              "audio_ext, caption_ext, label_ext)");
  IMP_REQUIRE(DataError, !modalities_.empty(), source_,
              ": no sample has an image, video or audio file; for shards, check the member "
              "extensions image_ext, video_ext and audio_ext, for manifests the columns image, "
              "video and audio");

  assign_labels(config, options.cache_dir);
  failures_ = std::make_unique<SampleFailures>(source_, config.max_bad_fraction, 200, log_);
  if (!train_) check_test_samples();
}

std::shared_ptr<const FileDataset> FileDataset::load(const DatasetConfig& config,
                                                     const ModelConfig& model, bool train,
                                                     const std::string& cache_dir) {
  // Loading indexes every shard, and the test split decodes every sample
  // once, so one process keeps what it loaded. The key contains every setting
  // that shapes the result.
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const FileDataset>> loaded;
  Config key_config;
  key_config.datasets = {config};
  key_config.model = model;
  const std::string key = str_cat(to_yaml(key_config), "\n", train, "\n", cache_dir);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = loaded.find(key);
  if (found != loaded.end()) return found->second;
  Options options;
  options.train = train;
  options.cache_dir = cache_dir;
  options.log = &std::cerr;
  auto dataset = std::make_shared<const FileDataset>(config, model, options);
  loaded.emplace(key, dataset);
  return dataset;
}

void FileDataset::note_problem(const std::string& reason, const std::string& message) {
  const int64_t count = ++load_problems_[reason];
  load_messages_.emplace(reason, to_valid_utf8(message));
  if (log_ != nullptr && count <= SampleFailures::kLoggedPerReason) {
    *log_ << "warning: " << source_ << ": " << to_valid_utf8(message) << '\n';
  }
}

void FileDataset::index_shards(const std::vector<std::string>& patterns) {
  std::vector<std::string> all = expand_all(patterns);
  // Shard i belongs to rank i mod world_size; with fewer shards than ranks,
  // every rank reads all of them and splits samples below.
  const bool split_shards = train_ && world_size_ > 1 && static_cast<int>(all.size()) >= world_size_;
  const bool split_samples = train_ && world_size_ > 1 && !split_shards;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!split_shards || static_cast<int>(i % world_size_) == rank_) shards_.push_back(all[i]);
  }

  int64_t sample_number = 0;
  for (size_t s = 0; s < shards_.size(); ++s) {
    const std::string& path = shards_[s];
    ShardIndex index;
    try {
      index = index_shard(path);
    } catch (const DecodeError& e) {
      // A shard that is missing or unreadable stops the run: it is a path
      // mistake far more often than damage. A shard that splits a sample
      // cannot be read safely at all.
      throw DataError(str_cat(source_, ": ", e.what()));
    }
    for (const ShardIndex::Problem& problem : index.problems) note_problem(problem.reason, problem.message);

    for (ShardSample& entry : index.samples) {
      const int64_t number = sample_number++;
      if (split_samples && number % world_size_ != rank_) continue;
      FileSample sample;
      sample.name = path + ":" + to_valid_utf8(entry.key);
      sample.shard = static_cast<int>(s);
      const auto find = [&](const std::vector<std::string>& extensions) -> const TarMember* {
        for (const std::string& extension : extensions) {
          auto it = entry.members.find(extension);
          if (it != entry.members.end()) return &it->second;
        }
        return nullptr;
      };
      const auto add_source = [&](const char* modality, const std::vector<std::string>& extensions) {
        for (const std::string& extension : extensions) {
          auto it = entry.members.find(extension);
          if (it == entry.members.end()) continue;
          SampleSource source;
          source.path = path;
          source.in_shard = true;
          source.offset = it->second.offset;
          source.size = it->second.size;
          source.extension = extension;
          sample.sources[modality] = source;
          return;
        }
      };
      add_source(kImageModality, config_.image_ext);
      add_source(kVideoModality, config_.video_ext);
      add_source(kAudioModality, config_.audio_ext);
      for (const auto& [extension, member] : entry.members) {
        sample.members += (sample.members.empty() ? "" : ", ") + to_valid_utf8(extension);
      }
      if (sample.sources.empty()) {
        // Often a file name with more dots than expected: "photo.v2.jpg" has
        // the key "photo" and the extension "v2.jpg".
        note_problem("shard: no image, video or audio member",
                     str_cat(sample.name, " has the members ", sample.members,
                             " but none with an extension of image_ext, video_ext or audio_ext; "
                             "the key is the name up to its first dot and the extension the rest, "
                             "so rename files with extra dots or list those extensions"));
        continue;
      }

      try {
        if (const TarMember* text = find(config_.caption_ext)) {
          sample.caption = trim(to_valid_utf8(read_member(path, *text)));
          sample.has_caption = true;
        }
        if (const TarMember* label = find(config_.label_ext)) {
          const std::string text = trim(to_valid_utf8(read_member(path, *label)));
          if (!text.empty()) sample.label_texts = {text};
        }
        auto json = entry.members.find("json");
        if (json != entry.members.end() && (!sample.has_caption || sample.label_texts.empty())) {
          const nlohmann::json fields =
              nlohmann::json::parse(to_valid_utf8(read_member(path, json->second)), nullptr,
                                    /*allow_exceptions=*/false);
          if (fields.is_object()) {
            auto caption = fields.find("caption");
            if (!sample.has_caption && caption != fields.end() && caption->is_string()) {
              sample.caption = trim(caption->get<std::string>());
              sample.has_caption = true;
            }
            // "label": one class; "labels": a list of classes.
            const auto label_text = [](const nlohmann::json& value) {
              if (value.is_string()) return trim(value.get<std::string>());
              if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
              return std::string();
            };
            auto label = fields.find("label");
            if (sample.label_texts.empty() && label != fields.end() && !label_text(*label).empty()) {
              sample.label_texts = {label_text(*label)};
            }
            auto labels = fields.find("labels");
            if (sample.label_texts.empty() && labels != fields.end() && labels->is_array()) {
              for (const auto& value : *labels) {
                if (!label_text(value).empty()) sample.label_texts.push_back(label_text(value));
              }
            }
          } else {
            note_problem("json: not an object",
                         str_cat(sample.name, ".json is not a JSON object; its caption and label "
                                              "fields were not read"));
          }
        }
      } catch (const DecodeError& e) {
        note_problem(e.reason(), e.what());
        continue;
      }
      samples_.push_back(std::move(sample));
    }
  }
}

void FileDataset::index_manifest(const std::string& path) {
  Manifest manifest;
  try {
    manifest = read_manifest(path);
  } catch (const DataError& e) {
    throw DataError(str_cat(source_, ": ", e.what()));
  }
  for (const std::string& problem : manifest.problems) note_problem("manifest: bad row", problem);
  const fs::path folder = fs::path(path).parent_path();
  int64_t number = 0;
  for (const ManifestRow& row : manifest.rows) {
    const int64_t this_number = number++;
    if (train_ && world_size_ > 1 && this_number % world_size_ != rank_) continue;
    FileSample sample;
    sample.name = str_cat(path, " line ", row.line);
    for (const char* modality : {kImageModality, kVideoModality, kAudioModality}) {
      auto it = row.fields.find(modality);
      if (it == row.fields.end()) continue;
      SampleSource source;
      const fs::path file(it->second);
      source.path = file.is_absolute() ? file.string() : (folder / file).string();
      std::string extension = file.extension().string();
      if (!extension.empty()) extension.erase(0, 1);
      for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      source.extension = extension;
      sample.sources[modality] = source;
    }
    auto caption = row.fields.find("caption");
    if (caption != row.fields.end()) {
      sample.caption = caption->second;
      sample.has_caption = true;
    }
    auto label = row.fields.find("label");
    if (label != row.fields.end()) sample.label_texts = {trim(label->second)};
    if (sample.label_texts.empty()) sample.label_texts = row.labels;
    samples_.push_back(std::move(sample));
  }
}

void FileDataset::assign_labels(const DatasetConfig& config, const std::string& cache_dir) {
  LabelSet set;
  set.name = "label";
  bool any_label = false;
  for (const FileSample& sample : samples_) {
    any_label = any_label || !sample.label_texts.empty();
    // One sample with several labels makes the set multi-label (sigmoid_bce).
    set.multi_label = set.multi_label || sample.label_texts.size() > 1;
  }

  if (!config.label_map.empty()) {
    set.class_names = read_lines(config.label_map);
    IMP_REQUIRE(DataError, !set.class_names.empty(), "the label map ", config.label_map,
                " (datasets.", config.name, ".label_map) lists no class names");
  } else if (any_label || !train_) {
    // Classes come from the whole train split, so that every split and rank
    // agrees on them; they are cached by the train files' fingerprint.
    const std::vector<std::string> train_paths =
        config.type == "webdataset" ? expand_all(config.train) : config.train;
    const fs::path cached = fs::path(cache_dir) / "labels" /
                            str_cat(config.name, "-", files_fingerprint(train_paths, config.type), ".txt");
    if (remember_classes_ && fs::exists(cached)) {
      set.class_names = read_lines(cached.string());
    } else if (train_ && world_size_ == 1) {
      std::vector<std::string> texts;
      bool integers = true;
      int64_t largest = -1;
      for (const FileSample& sample : samples_) {
        for (const std::string& text : sample.label_texts) {
          texts.push_back(text);
          auto index = parse_index(text);
          integers = integers && index.has_value();
          if (index) largest = std::max(largest, *index);
        }
      }
      if (integers) {
        for (int64_t i = 0; i <= largest; ++i) set.class_names.push_back(std::to_string(i));
      } else {
        std::set<std::string> unique(texts.begin(), texts.end());
        set.class_names.assign(unique.begin(), unique.end());
      }
      if (remember_classes_ && !set.class_names.empty()) write_lines_atomically(cached, set.class_names);
    } else {
      DatasetConfig train_config = config;
      Options options;
      options.train = true;
      options.cache_dir = cache_dir;
      ModelConfig model;
      FileDataset whole(train_config, model, options);
      set.class_names = whole.label_sets_.at(0).class_names;
    }
  }

  std::map<std::string, int64_t> by_name;
  for (size_t i = 0; i < set.class_names.size(); ++i) by_name.emplace(set.class_names[i], i);
  if (set.class_names.empty()) {
    // Labels here but none in the train split: one note, not one per sample.
    if (any_label) {
      note_problem("label: no classes",
                   str_cat("the labels of this split are ignored because the train split has none; "
                           "label the train samples or set datasets.", config.name, ".label_map"));
    }
    label_sets_ = {std::move(set)};
    return;
  }
  for (FileSample& sample : samples_) {
    for (const std::string& text : sample.label_texts) {
      auto named = by_name.find(text);
      auto index = parse_index(text);
      if (named != by_name.end()) {
        sample.labels.push_back(named->second);
      } else if (index && *index < static_cast<int64_t>(set.class_names.size())) {
        sample.labels.push_back(*index);
      } else {
        note_problem("label: unknown class",
                     str_cat(sample.name, " has the label '", text, "', which is not one of the ",
                             set.class_names.size(), " classes",
                             config.label_map.empty() ? " of the train split"
                                                      : str_cat(" in ", config.label_map),
                             "; the sample keeps its other labels, if any"));
      }
    }
    std::sort(sample.labels.begin(), sample.labels.end());
    sample.labels.erase(std::unique(sample.labels.begin(), sample.labels.end()), sample.labels.end());
  }
  label_sets_ = {std::move(set)};
}

void FileDataset::check_test_samples() {
  bool any_caption = false, any_label = false;
  for (const FileSample& sample : samples_) {
    any_caption = any_caption || sample.has_caption;
    any_label = any_label || !sample.labels.empty();
  }
  // Decode every sample once, on all cores, in sample order per thread.
  std::vector<std::string> reasons(samples_.size()), messages(samples_.size());
  std::atomic<int64_t> next{0};
  const int threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  auto work = [&] {
    for (int64_t i = next++; i < size(); i = next++) {
      const FileSample& sample = samples_[i];
      try {
        IMP_REQUIRE_DECODE(!any_caption || sample.has_caption, "caption: missing", sample.name,
                           " has no caption while other test samples do");
        IMP_REQUIRE_DECODE(!any_label || !sample.labels.empty(), "label: missing", sample.name,
                           " has no known label while other test samples do");
        decode(modalities_, i, /*train=*/false, 0, 0);
      } catch (const DecodeError& e) {
        reasons[i] = e.reason();
        messages[i] = e.what();
      } catch (const std::exception& e) {
        reasons[i] = "sample: error";
        messages[i] = str_cat(sample.name, ": ", e.what());
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work);
  for (std::thread& thread : pool) thread.join();

  std::vector<FileSample> kept;
  for (size_t i = 0; i < samples_.size(); ++i) {
    if (reasons[i].empty()) {
      kept.push_back(std::move(samples_[i]));
    } else {
      note_problem(reasons[i], messages[i] + "; left out of evaluation");
    }
  }
  const int64_t dropped = size() - static_cast<int64_t>(kept.size());
  IMP_REQUIRE(DataError, !kept.empty(), source_, ": all ", size(),
              " test samples failed their check; the first: ", messages.front());
  samples_ = std::move(kept);
  if (dropped > 0 && log_ != nullptr) {
    *log_ << "warning: " << source_ << ": " << dropped << " of " << dropped + size()
          << " test samples left out of evaluation\n";
  }
}

int64_t FileDataset::label(int64_t index, int set) const {
  const std::vector<int64_t>& labels = samples_.at(index).labels;
  return labels.empty() ? -1 : labels.front();
}

std::vector<int64_t> FileDataset::epoch_order(uint64_t epoch_seed) const {
  if (shards_.empty()) return Dataset::epoch_order(epoch_seed);
  // Shards in a fresh order each epoch, samples in tar order within a shard
  // (reads stay sequential), then a shuffle buffer: each incoming sample
  // replaces a randomly chosen one in the buffer, which goes out.
  std::vector<int64_t> shard_order(shards_.size());
  std::iota(shard_order.begin(), shard_order.end(), 0);
  for (int64_t i = static_cast<int64_t>(shard_order.size()) - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(below(mix64(epoch_seed, ~static_cast<uint64_t>(i)), i + 1));
    std::swap(shard_order[i], shard_order[j]);
  }
  std::vector<std::vector<int64_t>> by_shard(shards_.size());
  for (int64_t i = 0; i < size(); ++i) by_shard[samples_[i].shard].push_back(i);

  std::vector<int64_t> order;
  order.reserve(samples_.size());
  std::vector<int64_t> buffer;
  const size_t capacity = static_cast<size_t>(std::max(1, config_.shuffle_buffer));
  uint64_t counter = 0;
  for (int64_t shard : shard_order) {
    for (int64_t sample : by_shard[shard]) {
      if (buffer.size() < capacity) {
        buffer.push_back(sample);
        continue;
      }
      const size_t j = below(mix64(epoch_seed, counter++), buffer.size());
      order.push_back(buffer[j]);
      buffer[j] = sample;
    }
  }
  while (!buffer.empty()) {
    const size_t j = below(mix64(epoch_seed, counter++), buffer.size());
    order.push_back(buffer[j]);
    buffer[j] = buffer.back();
    buffer.pop_back();
  }
  return order;
}

std::map<std::string, at::Tensor> FileDataset::decode(const std::vector<std::string>& modalities,
                                                      int64_t index, bool train, uint64_t draw,
                                                      int view) const {
  const FileSample& sample = samples_.at(index);
  std::map<std::string, at::Tensor> out;
  const bool want_video = contains(modalities, kVideoModality);
  const bool want_audio = contains(modalities, kAudioModality);
  const bool audio_from_video =
      want_audio && !sample.sources.count(kAudioModality) && sample.sources.count(kVideoModality);
  const auto source_of = [&](const char* modality) -> const SampleSource& {
    auto it = sample.sources.find(modality);
    IMP_REQUIRE_DECODE(it != sample.sources.end(), str_cat(modality, ": missing"), sample.name,
                       " has no ", modality, " file",
                       config_.type == "webdataset" ? " (member extensions are set by datasets." : "",
                       config_.type == "webdataset" ? config_.name + "." + modality + "_ext)" : "");
    return it->second;
  };
  const int64_t max_pixels = static_cast<int64_t>(config_.max_megapixels * 1e6);
  const bool flip = train && config_.hflip && (mix64(draw, 2) & 1) != 0;
  const auto crop_for = [&](int height, int width) {
    if (train && config_.random_resized_crop) {
      return random_resized_crop_box(height, width, config_.crop_min_scale, 1.0, 3.0 / 4.0, 4.0 / 3.0,
                                     mix64(draw, 1));
    }
    return center_crop_box(height, width, static_cast<int>(height_), static_cast<int>(width_), 1.0);
  };

  if (contains(modalities, kImageModality)) {
    const std::string data = read_sample_source(source_of(kImageModality), kImageModality, sample.name);
    ImageDecodeOptions options;
    options.channels = channels_;
    options.max_pixels = max_pixels;
    const DecodedImage image = decode_image(bytes(data), data.size(), options, sample.name);
    at::Tensor pixels = at::empty({channels_, 1, height_, width_}, at::kFloat);
    crop_resize(image, crop_for(image.height, image.width), static_cast<int>(height_),
                static_cast<int>(width_), flip, pixels.data_ptr<float>());
    out[kImageModality] = pixels;
  }

  if (want_video || audio_from_video) {
    const std::string data = read_sample_source(source_of(kVideoModality), kVideoModality, sample.name);
    VideoDecodeOptions options;
    options.frames = config_.frames;
    options.fps = config_.video_fps;
    const int views = std::max(1, config_.eval_clips);
    options.start_fraction = train ? unit_double(mix64(draw, 3))
                                   : (views == 1 ? 0.5 : static_cast<double>(view) / (views - 1));
    options.short_side = static_cast<int>(std::max(height_, width_));
    options.max_pixels = max_pixels;
    options.time_limit_seconds = config_.decode_timeout;
    options.want_audio = audio_from_video;
    options.audio_rate = audio_.sample_rate;
    const DecodedVideo video = decode_video(bytes(data), data.size(), options, sample.name);
    if (want_video) {
      const int64_t T = video.frames, plane = channels_ * height_ * width_;
      at::Tensor frames = at::empty({T, channels_, height_, width_}, at::kFloat);
      const CropBox box = crop_for(video.height, video.width);
      DecodedImage frame;
      frame.height = video.height;
      frame.width = video.width;
      frame.channels = 3;
      const size_t frame_bytes = static_cast<size_t>(video.height) * video.width * 3;
      for (int64_t t = 0; t < T; ++t) {
        frame.pixels.assign(video.pixels.begin() + t * frame_bytes,
                            video.pixels.begin() + (t + 1) * frame_bytes);
        if (channels_ == 1) {
          // Grey from RGB with the BT.601 weights, as the image decoder does.
          std::vector<uint8_t> grey(static_cast<size_t>(video.height) * video.width);
          for (size_t p = 0; p < grey.size(); ++p) {
            const uint8_t* rgb = &frame.pixels[3 * p];
            grey[p] = static_cast<uint8_t>(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] + 0.5);
          }
          DecodedImage grey_frame{video.height, video.width, 1, std::move(grey)};
          crop_resize(grey_frame, box, static_cast<int>(height_), static_cast<int>(width_), flip,
                      frames.data_ptr<float>() + t * plane);
        } else {
          crop_resize(frame, box, static_cast<int>(height_), static_cast<int>(width_), flip,
                      frames.data_ptr<float>() + t * plane);
        }
      }
      out[kVideoModality] = frames.permute({1, 0, 2, 3}).contiguous();  // [C, T, H, W]
    }
    if (audio_from_video) {
      IMP_REQUIRE_DECODE(video.has_audio && !video.audio.empty(), "audio: missing", sample.name,
                         " has no audio file and its video has no sound track");
      out[kAudioModality] = spectrogram(video.audio, audio_);
    }
  }

  if (want_audio && !audio_from_video) {
    const std::string data = read_sample_source(source_of(kAudioModality), kAudioModality, sample.name);
    const double clip_seconds = static_cast<double>(clip_samples(audio_)) / audio_.sample_rate;
    AudioDecodeOptions options;
    options.sample_rate = audio_.sample_rate;
    if (train) {
      const AudioInfo info = probe_audio(bytes(data), data.size(), sample.name);
      const double slack = std::max(0.0, info.duration - clip_seconds);
      options.start_seconds = unit_double(mix64(draw, 4)) * slack;
    }
    options.max_seconds = clip_seconds;
    const DecodedAudio audio = decode_audio(bytes(data), data.size(), options, sample.name);
    IMP_REQUIRE_DECODE(!audio.samples.empty(), "audio: empty", sample.name, " holds no audio samples");
    out[kAudioModality] = spectrogram(audio.samples, audio_);
  }
  return out;
}

std::map<std::string, at::Tensor> FileDataset::example_inputs(
    const std::vector<std::string>& modalities, int64_t index, uint64_t draw) const {
  return decode(modalities, index, train_, draw, 0);
}

at::Tensor FileDataset::input(const std::string& modality, const std::vector<int64_t>& indices,
                              const std::vector<uint64_t>& draws) const {
  std::vector<at::Tensor> rows;
  for (size_t b = 0; b < indices.size(); ++b) {
    rows.push_back(decode({modality}, indices[b], train_, draws[b], 0).at(modality));
  }
  return at::stack(rows);
}

int FileDataset::eval_views(const std::string& modality) const {
  return modality == kVideoModality ? std::max(1, config_.eval_clips) : 1;
}

at::Tensor FileDataset::eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                                   int view) const {
  std::vector<at::Tensor> rows;
  for (int64_t index : indices) {
    try {
      rows.push_back(decode({modality}, index, /*train=*/false, 0, view).at(modality));
    } catch (const DecodeError& e) {
      // The sample passed its check at load; failing now means the file
      // changed or a later view is damaged.
      throw DataError(str_cat(source_, ": ", e.what(), " (it decoded when the split was loaded; "
                                                       "did the file change during the run?)"));
    }
  }
  return at::stack(rows);
}

std::string FileDataset::caption(int64_t index, uint64_t draw) const {
  const FileSample& sample = samples_.at(index);
  IMP_REQUIRE_DECODE(sample.has_caption, "caption: missing", sample.name, " has no caption",
                     config_.type == "webdataset"
                         ? str_cat(" (its members: ", sample.members, "; captions come from datasets.",
                                   config_.name, ".caption_ext, or a \"caption\" field in its .json)")
                         : " (manifest column 'caption')");
  return sample.caption;
}

std::vector<std::string> FileDataset::text_corpus() const {
  std::set<std::string> texts;
  for (const FileSample& sample : samples_) {
    if (sample.has_caption && !sample.caption.empty()) texts.insert(sample.caption);
  }
  for (const std::string& text : caption_corpus(label_sets_.at(0).class_names)) texts.insert(text);
  return {texts.begin(), texts.end()};
}

void FileDataset::check_model_fits(const ModelConfig& model) const {
  const auto& patch = model.vision.patch;
  if (contains(modalities_, kImageModality) || contains(modalities_, kVideoModality)) {
    IMP_REQUIRE(ConfigError, height_ % patch[1] == 0 && width_ % patch[2] == 0, "dataset '", name(),
                "' feeds ", height_, "x", width_, " images, which model.vision.patch ", patch[1], "x",
                patch[2], " does not divide; set datasets.", name(),
                ".image_size to a multiple of the patch");
  }
  if (contains(modalities_, kVideoModality)) {
    IMP_REQUIRE(ConfigError, config_.frames % patch[0] == 0, "dataset '", name(), "' samples ",
                config_.frames, " frames per clip, which model.vision.patch[0] = ", patch[0],
                " does not divide; set datasets.", name(), ".frames to a multiple of it");
  }
}

}  // namespace imp
