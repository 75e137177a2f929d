#include "imp/infer/embed.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "imp/core/autocast.h"
#include "imp/core/error.h"
#include "imp/core/utf8.h"
#include "imp/data/file_dataset.h"
#include "imp/eval/evaluator.h"
#include "imp/io/audio_decoder.h"
#include "imp/io/decode_error.h"
#include "imp/io/image_decoder.h"
#include "imp/io/safetensors.h"
#include "imp/io/video_decoder.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

bool task_feeds(const Config& config, const std::string& dataset, const std::string& modality) {
  for (const TaskConfig& task : config.tasks) {
    if (task.dataset == dataset &&
        std::find(task.modalities.begin(), task.modalities.end(), modality) != task.modalities.end()) {
      return true;
    }
  }
  return false;
}

// A folder removed when the object goes out of scope.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    std::string pattern = (fs::temp_directory_path() / "imp-embed-XXXXXX").string();
    IMP_REQUIRE(DataError, ::mkdtemp(pattern.data()) != nullptr, "cannot create a temporary folder in ",
                fs::temp_directory_path().string(), ": ", std::strerror(errno));
    path_ = pattern;
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Decodes an image whole, or a video's or audio file's header. A bad input
// is then reported under its own path with the decoder's reason, before any
// input is embedded.
void check_decodes(const std::string& file, const std::string& modality) {
  std::ifstream in(file, std::ios::binary);
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  try {
    if (modality == "image") {
      decode_image(bytes, data.size(), ImageDecodeOptions{}, file);
    } else if (modality == "video") {
      probe_video(bytes, data.size(), file);
    } else {
      probe_audio(bytes, data.size(), file);
    }
  } catch (const DecodeError& e) {
    // The decoder's message starts with the file name.
    throw DataError(str_cat(e.what(), "; nothing was written"));
  }
}

// Encodes `files` of one modality through a manifest dataset with the
// settings the model was trained with; rows in the order of `files`.
Features embed_files(InferenceModel& loaded, const Config& config, const std::string& modality,
                     const std::vector<std::string>& files) {
  TemporaryFolder folder;
  const fs::path manifest = folder.path() / "inputs.jsonl";
  {
    std::ofstream out(manifest);
    for (const std::string& file : files) {
      IMP_REQUIRE(DataError, fs::is_regular_file(file), "cannot read ", file,
                  ": no such file; check the path");
      check_decodes(file, modality);
      out << nlohmann::json({{modality, fs::absolute(file).string()}}).dump() << '\n';
    }
  }
  // One placeholder class: inputs have no labels, and the dataset would
  // otherwise look for the classes of a train split.
  const fs::path label_map = folder.path() / "classes.txt";
  std::ofstream(label_map) << "unlabelled\n";
  DatasetConfig dataset = inference_dataset(config, modality, manifest.string());
  dataset.label_map = label_map.string();

  std::ostringstream warnings;
  FileDataset::Options options;
  options.train = false;
  options.cache_dir = (folder.path() / "cache").string();
  options.remember_classes = false;
  options.log = &warnings;
  options.description = "the " + modality + " inputs";
  std::unique_ptr<FileDataset> data;
  try {
    data = std::make_unique<FileDataset>(dataset, config.model, options);
  } catch (const DataError& e) {
    throw DataError(str_cat("cannot embed the ", modality, " inputs: ", e.what(), "; nothing was written"));
  }
  if (data->size() != static_cast<int64_t>(files.size())) {
    // Samples are named "<manifest> line <n>"; line n is files[n - 1].
    std::vector<bool> present(files.size(), false);
    for (int64_t i = 0; i < data->size(); ++i) {
      const std::string name = data->example_name(i);
      const size_t at = name.rfind(" line ");
      if (at != std::string::npos) {
        const size_t line = std::stoul(name.substr(at + 6));
        if (line >= 1 && line <= files.size()) present[line - 1] = true;
      }
    }
    std::string missing;
    for (size_t i = 0; i < files.size(); ++i) {
      if (!present[i]) missing += (missing.empty() ? "" : ", ") + files[i];
    }
    std::string details = warnings.str();
    const std::string manifest_name = manifest.string();
    for (size_t pos; (pos = details.find(manifest_name)) != std::string::npos;) {
      details.replace(pos, manifest_name.size(), "input");
    }
    throw DataError(str_cat("cannot decode ", missing, "; nothing was written. The decoder said:\n",
                            details));
  }
  std::vector<int64_t> all(files.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  return embed(loaded.model, *data, modality, all, {}, /*project=*/true, config, loaded.device);
}

at::Tensor l2_normalize(const at::Tensor& x) {
  const at::Tensor values = x.to(at::kFloat);
  return values / values.norm(2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
}

void write_bytes_atomically(const std::string& path, const std::string& bytes) {
  const std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    IMP_REQUIRE(DataError, out.good(), "cannot write ", temporary, "; check that the folder exists and is writable");
    out << bytes;
    out.flush();
    IMP_REQUIRE(DataError, out.good(), "writing ", temporary, " failed (disk full?)");
  }
  fs::rename(temporary, path);
}

}  // namespace

std::string modality_of_file(const std::string& path) {
  std::string extension = fs::path(path).extension().string();
  if (extension.empty()) return "";
  extension = extension.substr(1);
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const DatasetConfig defaults;
  const std::pair<const char*, const std::vector<std::string>*> lists[] = {
      {"image", &defaults.image_ext}, {"video", &defaults.video_ext}, {"audio", &defaults.audio_ext}};
  for (const auto& [modality, list] : lists) {
    if (std::find(list->begin(), list->end(), extension) != list->end()) return modality;
  }
  // Audio formats beyond the data set defaults that libsndfile reads too.
  for (const char* audio : {"opus", "aiff", "aif", "au"}) {
    if (extension == audio) return "audio";
  }
  return "";
}

DatasetConfig inference_dataset(const Config& config, const std::string& modality,
                                const std::string& manifest) {
  const DatasetConfig* source = nullptr;
  for (const DatasetConfig& dataset : config.datasets) {
    if (task_feeds(config, dataset.name, modality)) {
      source = &dataset;
      break;
    }
  }
  IMP_REQUIRE(ConfigError, source != nullptr, "no task of the config trains on ", modality,
              ", so the model has not learnt it; pass ", modality == "image" ? "videos, audio" : "other",
              " files or text instead");
  DatasetConfig dataset;
  dataset.name = source->name;
  dataset.type = "manifest";
  dataset.train = {manifest};
  dataset.test = {manifest};
  dataset.modalities = {modality};
  dataset.frames = source->frames;
  dataset.eval_clips = source->eval_clips;
  dataset.max_bad_fraction = 1.0;
  if (source->type == "fashion_mnist") {
    dataset.image_size = {28, 28};
  } else if (source->type == "moving_fashion_mnist") {
    dataset.image_size = {source->canvas, source->canvas};
  } else {
    dataset.image_size = source->image_size;
    dataset.video_fps = source->video_fps;
    dataset.max_megapixels = source->max_megapixels;
    dataset.decode_timeout = source->decode_timeout;
  }
  return dataset;
}

Embeddings embed_inputs(InferenceModel& loaded, const Config& config,
                        const std::vector<std::string>& files, const std::vector<std::string>& texts) {
  IMP_REQUIRE(ConfigError, !files.empty() || !texts.empty(), "nothing to embed: pass files or --text");
  at::NoGradGuard no_grad;
  // Files are grouped by modality for batching, then put back in order.
  std::map<std::string, std::vector<size_t>> by_modality;
  Embeddings out;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string modality = modality_of_file(files[i]);
    IMP_REQUIRE(ConfigError, !modality.empty(), "cannot tell the modality of ", files[i],
                " from its extension; name images .jpg/.png/.webp, videos .mp4/.webm/.mkv/.mov/.avi "
                "and audio .wav/.flac/.ogg/.mp3, or pass text with --text");
    by_modality[modality].push_back(i);
    out.inputs.push_back(files[i]);
    out.modalities.push_back(modality);
  }
  const int64_t rows = static_cast<int64_t>(files.size() + texts.size());
  std::vector<at::Tensor> embedding(rows), pooled(rows);
  for (const auto& [modality, indices] : by_modality) {
    std::vector<std::string> group;
    for (size_t i : indices) group.push_back(files[i]);
    const Features features = embed_files(loaded, config, modality, group);
    for (size_t j = 0; j < indices.size(); ++j) {
      embedding[indices[j]] = features.embedding[static_cast<int64_t>(j)];
      pooled[indices[j]] = features.pooled[static_cast<int64_t>(j)];
    }
  }
  if (!texts.empty()) {
    AutocastScope autocast(loaded.device.type(), config.train.dtype == "bf16");
    const size_t batch = static_cast<size_t>(config.eval.batch_size);
    for (size_t start = 0; start < texts.size(); start += batch) {
      const std::vector<std::string> chunk(texts.begin() + start,
                                           texts.begin() + std::min(texts.size(), start + batch));
      const TextBatch encoded_text = loaded.tokenizer.encode_batch(chunk, config.model.text.max_len);
      const Encoded encoded = loaded.model->encode("text", encoded_text.ids.to(loaded.device),
                                                   encoded_text.mask.to(loaded.device));
      const at::Tensor projected = l2_normalize(loaded.model->project("text", encoded.pooled)).cpu();
      const at::Tensor text_pooled = encoded.pooled.to(at::kFloat).cpu();
      for (size_t j = 0; j < chunk.size(); ++j) {
        embedding[files.size() + start + j] = projected[static_cast<int64_t>(j)];
        pooled[files.size() + start + j] = text_pooled[static_cast<int64_t>(j)];
      }
    }
    for (const std::string& text : texts) {
      out.inputs.push_back(to_valid_utf8(text));
      out.modalities.push_back("text");
    }
  }
  out.embedding = at::stack(embedding);
  out.pooled = at::stack(pooled);
  return out;
}

void write_npy(const std::string& path, const at::Tensor& matrix) {
  const at::Tensor data = matrix.to(at::kCPU, at::kFloat).contiguous();
  std::string shape = "(";
  for (int64_t d = 0; d < data.dim(); ++d) {
    shape += std::to_string(data.size(d)) + (data.dim() == 1 || d + 1 < data.dim() ? "," : "");
    if (d + 1 < data.dim()) shape += " ";
  }
  shape += ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header + newline, padded with
  // spaces to a multiple of 64 bytes so the data start aligned.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>((header.size() >> 8) & 0xff);
  bytes += header;
  bytes.append(static_cast<const char*>(data.data_ptr()), data.numel() * sizeof(float));
  write_bytes_atomically(path, bytes);
}

void write_embeddings(const std::string& path, const Embeddings& embeddings) {
  const std::string extension = fs::path(path).extension().string();
  if (extension == ".npy") {
    write_npy(path, embeddings.embedding);
  } else if (extension == ".safetensors") {
    save_safetensors(path, {{"embedding", embeddings.embedding}, {"pooled", embeddings.pooled}},
                     {{"inputs", nlohmann::json(embeddings.inputs).dump()},
                      {"modalities", nlohmann::json(embeddings.modalities).dump()}});
  } else {
    throw ConfigError(str_cat("--out ", path, ": name the output .npy (the embeddings only) or ",
                              ".safetensors (embeddings, pooled features and the input names)"));
  }
}

std::vector<std::string> read_class_names(const std::string& path) {
  std::ifstream in(path);
  IMP_REQUIRE(DataError, in.good(), "cannot read the class list ", path, "; check the path");
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const size_t last = line.find_last_not_of(" \t\r");
    names.push_back(to_valid_utf8(line.substr(first, last - first + 1)));
  }
  IMP_REQUIRE(DataError, !names.empty(), "the class list ", path,
              " names no classes; write one class name per line");
  return names;
}

std::vector<Classification> classify_files(InferenceModel& loaded, const Config& config,
                                           const std::vector<std::string>& files,
                                           const std::vector<std::string>& class_names,
                                           const std::vector<std::string>& prompts, int k) {
  IMP_REQUIRE(ConfigError, !files.empty(), "nothing to classify: pass image, video or audio files");
  IMP_REQUIRE(ConfigError, !class_names.empty(), "no class names to choose from");
  for (const std::string& prompt : prompts) {
    IMP_REQUIRE(ConfigError, prompt.find("{}") != std::string::npos, "--prompt '", prompt,
                "' has no {} where the class name goes; write e.g. \"a photo of a {}\"");
  }
  at::NoGradGuard no_grad;
  const Embeddings embedded = embed_inputs(loaded, config, files, {});
  LabelSet set;
  set.name = "labels";
  set.class_names = class_names;
  set.prompts = prompts;
  const at::Tensor classes =
      class_embeddings(loaded.model, loaded.tokenizer, set, config, loaded.device).cpu();
  const double scale = loaded.model->logit_scale().item<double>();
  const at::Tensor probabilities = (embedded.embedding.matmul(classes.t()) * scale).softmax(1);
  const int64_t keep = std::min<int64_t>(std::max(1, k), static_cast<int64_t>(class_names.size()));
  const auto [values, indices] = probabilities.topk(keep, 1);
  std::vector<Classification> result;
  for (size_t i = 0; i < files.size(); ++i) {
    Classification item;
    item.input = files[i];
    for (int64_t j = 0; j < keep; ++j) {
      const int64_t index = indices[static_cast<int64_t>(i)][j].item<int64_t>();
      item.top.emplace_back(class_names[index], values[static_cast<int64_t>(i)][j].item<double>());
    }
    result.push_back(std::move(item));
  }
  return result;
}

}  // namespace imp
