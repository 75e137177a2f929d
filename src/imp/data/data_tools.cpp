#include "imp/data/data_tools.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "imp/core/error.h"
#include "imp/core/utf8.h"
#include "imp/data/file_dataset.h"
#include "imp/data/manifest.h"
#include "imp/io/audio_decoder.h"
#include "imp/io/decode_error.h"
#include "imp/io/image_decoder.h"
#include "imp/io/tar_shard.h"
#include "imp/io/video_decoder.h"

namespace fs = std::filesystem;

namespace imp {
namespace {

std::string extension_of(const std::string& path) {
  std::string extension = fs::path(path).extension().string();
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return extension;
}

// Smallest, largest and mean of a series of values.
struct Range {
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;
  int64_t count = 0;
  void add(double value) {
    min = std::min(min, value);
    max = std::max(max, value);
    sum += value;
    ++count;
  }
  nlohmann::json to_json() const {
    if (count == 0) return nullptr;
    return {{"min", min}, {"max", max}, {"mean", sum / count}};
  }
};

struct ModalityStats {
  int64_t count = 0, failed = 0;
  Range height, width, frames, seconds, sample_rate, channels;
};

const uint8_t* bytes(const std::string& data) {
  return reinterpret_cast<const uint8_t*>(data.data());
}

}  // namespace

nlohmann::json inspect_data(const std::vector<std::string>& paths, int max_examples) {
  IMP_REQUIRE(DataError, !paths.empty(), "imp data inspect needs at least one path");
  std::vector<std::string> shards, manifests;
  for (const std::string& path : paths) {
    const std::string extension = extension_of(path);
    if (extension == ".csv" || extension == ".jsonl" || extension == ".json") {
      manifests.push_back(path);
    } else {
      shards.push_back(path);
    }
  }

  // Each source is loaded as a dataset of its own kind, without decoding;
  // decoding happens below, one file at a time.
  std::vector<std::shared_ptr<FileDataset>> sets;
  ModelConfig model;
  FileDataset::Options options;
  options.train = true;
  options.remember_classes = false;
  options.description = "imp data inspect";
  if (!shards.empty()) {
    DatasetConfig config;
    config.name = "inspect";
    config.type = "webdataset";
    config.train = shards;
    sets.push_back(std::make_shared<FileDataset>(config, model, options));
  }
  for (const std::string& manifest : manifests) {
    DatasetConfig config;
    config.name = "inspect";
    config.type = "manifest";
    config.train = {manifest};
    sets.push_back(std::make_shared<FileDataset>(config, model, options));
  }

  std::map<std::string, ModalityStats> stats;
  std::map<std::string, int64_t> failures;
  std::map<std::string, std::string> first_failure;
  int64_t skipped_entries = 0, videos_with_sound = 0;
  int64_t samples = 0, captions = 0, labels = 0;
  std::set<std::string> classes;
  nlohmann::json examples = nlohmann::json::array();
  for (const auto& set : sets) {
    for (const auto& [reason, count] : set->load_problems()) {
      // Directories and links in a tar are normal and harmless.
      if (reason == "shard: skipped entry") {
        skipped_entries += count;
        continue;
      }
      failures[reason] += count;
      first_failure.emplace(reason, set->load_problem_messages().at(reason));
    }
    for (const FileSample& sample : set->samples()) {
      ++samples;
      captions += sample.has_caption ? 1 : 0;
      if (!sample.label_texts.empty()) {
        ++labels;
        classes.insert(sample.label_texts.begin(), sample.label_texts.end());
      }
      nlohmann::json example = {{"name", to_valid_utf8(sample.name)}};
      if (sample.has_caption) example["caption"] = sample.caption;
      if (sample.label_texts.size() == 1) example["label"] = sample.label_texts.front();
      if (sample.label_texts.size() > 1) example["labels"] = sample.label_texts;
      for (const auto& [modality, source] : sample.sources) {
        ModalityStats& s = stats[modality];
        ++s.count;
        try {
          const std::string data = read_sample_source(source, modality, sample.name);
          nlohmann::json shape;
          if (modality == "image") {
            const DecodedImage image = decode_image(bytes(data), data.size(), {}, sample.name);
            s.height.add(image.height);
            s.width.add(image.width);
            shape = {{"height", image.height}, {"width", image.width}};
          } else if (modality == "video") {
            const VideoInfo info = probe_video(bytes(data), data.size(), sample.name);
            VideoDecodeOptions video_options;
            video_options.frames = 2;
            video_options.short_side = 64;
            decode_video(bytes(data), data.size(), video_options, sample.name);
            s.height.add(info.height);
            s.width.add(info.width);
            s.seconds.add(info.duration);
            s.frames.add(info.nominal_fps);
            videos_with_sound += info.has_audio ? 1 : 0;
            shape = {{"height", info.height}, {"width", info.width}, {"seconds", info.duration},
                     {"fps", info.nominal_fps}, {"has_audio", info.has_audio}};
          } else {
            const AudioInfo info = probe_audio(bytes(data), data.size(), sample.name);
            AudioDecodeOptions audio_options;
            audio_options.sample_rate = info.sample_rate;
            decode_audio(bytes(data), data.size(), audio_options, sample.name);
            s.seconds.add(info.duration);
            s.sample_rate.add(info.sample_rate);
            s.channels.add(info.channels);
            shape = {{"seconds", info.duration}, {"sample_rate", info.sample_rate},
                     {"channels", info.channels}, {"format", info.format}};
          }
          example[modality] = shape;
        } catch (const DecodeError& e) {
          ++s.failed;
          ++failures[e.reason()];
          first_failure.emplace(e.reason(), to_valid_utf8(e.what()));
          example[modality] = {{"error", to_valid_utf8(e.what())}};
        }
      }
      if (static_cast<int>(examples.size()) < max_examples) examples.push_back(example);
    }
  }

  nlohmann::json report;
  report["sources"] = paths;
  report["samples"] = samples;
  report["captions"] = captions;
  report["labels"] = labels;
  report["classes"] = classes.size();
  nlohmann::json modalities = nlohmann::json::object();
  for (const auto& [modality, s] : stats) {
    nlohmann::json entry = {{"count", s.count}, {"failed", s.failed}};
    if (s.height.count) entry["height"] = s.height.to_json();
    if (s.width.count) entry["width"] = s.width.to_json();
    if (s.seconds.count) entry["seconds"] = s.seconds.to_json();
    if (modality == "video" && s.frames.count) entry["fps"] = s.frames.to_json();
    if (s.sample_rate.count) entry["sample_rate"] = s.sample_rate.to_json();
    if (s.channels.count) entry["channels"] = s.channels.to_json();
    modalities[modality] = entry;
  }
  if (modalities.contains("video")) modalities["video"]["with_sound"] = videos_with_sound;
  report["modalities"] = modalities;
  report["skipped_entries"] = skipped_entries;
  report["failures"] = failures;
  report["first_failure"] = first_failure;
  report["examples"] = examples;
  return report;
}

std::string format_inspection(const nlohmann::json& report) {
  std::ostringstream out;
  const auto count = [](int64_t n, const char* singular, const char* plural) {
    return str_cat(n, " ", n == 1 ? singular : plural);
  };
  out << count(report["samples"].get<int64_t>(), "sample", "samples") << "; "
      << report["captions"].get<int64_t>() << " with captions, " << report["labels"].get<int64_t>()
      << " with labels (" << count(report["classes"].get<int64_t>(), "class", "classes") << ")\n";
  // `decimals` digits after the point: pixels and hertz are whole numbers.
  const auto range = [](const nlohmann::json& r, const char* unit, int decimals) {
    char text[128];
    std::snprintf(text, sizeof text, "%.*f to %.*f%s (mean %.*f)", decimals, r["min"].get<double>(),
                  decimals, r["max"].get<double>(), unit, decimals + 1, r["mean"].get<double>());
    return std::string(text);
  };
  for (const auto& [modality, entry] : report["modalities"].items()) {
    out << modality << ": " << count(entry["count"].get<int64_t>(), "file", "files") << ", "
        << entry["failed"].get<int64_t>() << " failed to decode";
    if (entry.contains("with_sound")) out << ", " << entry["with_sound"].get<int64_t>() << " with a sound track";
    out << "\n";
    if (entry.contains("height")) {
      out << "  height " << range(entry["height"], " px", 0) << ", width "
          << range(entry["width"], " px", 0) << "\n";
    }
    if (entry.contains("seconds")) out << "  duration " << range(entry["seconds"], " s", 2) << "\n";
    if (entry.contains("fps")) out << "  frame rate " << range(entry["fps"], " fps", 1) << "\n";
    if (entry.contains("sample_rate")) {
      out << "  sample rate " << range(entry["sample_rate"], " Hz", 0) << ", channels "
          << range(entry["channels"], "", 0) << "\n";
    }
  }
  if (report["skipped_entries"].get<int64_t>() > 0) {
    out << count(report["skipped_entries"].get<int64_t>(), "tar entry", "tar entries")
        << " skipped (directories, links or files without a key)\n";
  }
  if (report["failures"].empty()) {
    out << "no failures\n";
  } else {
    out << "failures per reason:\n";
    for (const auto& [reason, count] : report["failures"].items()) {
      out << "  " << reason << ": " << count.get<int64_t>();
      if (report["first_failure"].contains(reason)) {
        out << " (first: " << report["first_failure"][reason].get<std::string>() << ")";
      }
      out << "\n";
    }
  }
  return out.str();
}

MakeShardsResult make_shards(const MakeShardsOptions& options) {
  IMP_REQUIRE(ConfigError, options.samples_per_shard > 0,
              "--samples-per-shard must be positive, found ", options.samples_per_shard);
  const Manifest manifest = read_manifest(options.manifest);
  const fs::path folder = fs::path(options.manifest).parent_path();
  fs::create_directories(options.out_dir);

  MakeShardsResult result;
  for (const std::string& problem : manifest.problems) {
    ++result.skipped;
    if (result.problems.size() < 20) result.problems.push_back(problem);
  }
  std::unique_ptr<ShardWriter> writer;
  int64_t in_shard = 0;
  const auto shard_path = [&](size_t number) {
    char name[32];
    std::snprintf(name, sizeof name, "-%06zu.tar", number);
    return (fs::path(options.out_dir) / (options.prefix + name)).string();
  };
  const auto finish = [&] {
    if (!writer) return;
    writer->close();
    writer.reset();
  };

  for (const ManifestRow& row : manifest.rows) {
    // Read every file first: a row with a missing file is skipped whole.
    std::vector<std::pair<std::string, std::string>> members;
    std::string problem;
    for (const char* modality : {"image", "video", "audio"}) {
      auto it = row.fields.find(modality);
      if (it == row.fields.end()) continue;
      const fs::path file(it->second);
      const std::string path = file.is_absolute() ? file.string() : (folder / file).string();
      std::string extension = extension_of(path);
      if (extension.empty()) {
        problem = str_cat(options.manifest, " line ", row.line, ": the ", modality, " file ", path,
                          " has no extension, which the shard member needs; row skipped");
        break;
      }
      try {
        SampleSource source;
        source.path = path;
        members.emplace_back(extension.substr(1),
                             read_sample_source(source, modality, str_cat(options.manifest, " line ", row.line)));
      } catch (const DecodeError& e) {
        problem = str_cat(e.what(), "; row skipped");
        break;
      }
    }
    if (problem.empty() && members.empty()) {
      problem = str_cat(options.manifest, " line ", row.line,
                        ": no image, video or audio column; row skipped");
    }
    if (!problem.empty()) {
      ++result.skipped;
      if (result.problems.size() < 20) result.problems.push_back(problem);
      continue;
    }
    if (writer && in_shard == options.samples_per_shard) finish();
    if (!writer) {
      result.shards.push_back(shard_path(result.shards.size()));
      writer = std::make_unique<ShardWriter>(result.shards.back());
      in_shard = 0;
    }
    char key[32];
    std::snprintf(key, sizeof key, "%06lld", static_cast<long long>(result.samples));
    for (const auto& [extension, data] : members) writer->add(str_cat(key, ".", extension), data);
    auto caption = row.fields.find("caption");
    if (caption != row.fields.end()) writer->add(str_cat(key, ".txt"), caption->second);
    auto label = row.fields.find("label");
    if (label != row.fields.end()) writer->add(str_cat(key, ".cls"), label->second);
    nlohmann::json fields(row.fields);
    if (!row.labels.empty()) fields["labels"] = row.labels;
    writer->add(str_cat(key, ".json"), fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    ++result.samples;
    ++in_shard;
  }
  finish();
  if (result.shards.size() == 1) {
    result.pattern = result.shards.front();
  } else if (!result.shards.empty()) {
    char range[48];
    std::snprintf(range, sizeof range, "-{000000..%06zu}.tar", result.shards.size() - 1);
    result.pattern = (fs::path(options.out_dir) / (options.prefix + range)).string();
  }
  return result;
}

}  // namespace imp
