// `imp embed` and `imp classify`: trained weights applied to the user's own
// files. Images, videos and audio are decoded and resized exactly as the
// test split of the dataset the model learnt that modality from (its image
// size, frames, clips and audio settings), so that embeddings match the
// ones evaluation computes.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "imp/config/config.h"
#include "imp/infer/inference.h"

namespace imp {

// "image", "video" or "audio" from a file's extension (the lists of
// DatasetConfig's image_ext, video_ext and audio_ext, case ignored), or ""
// for an extension none of them lists.
std::string modality_of_file(const std::string& path);

// The settings used to decode `modality` for this model: those of the
// first dataset a task of `config` feeds that modality from, reading its
// test split from `manifest`. Throws ConfigError when no task uses the
// modality (the model never learnt it).
DatasetConfig inference_dataset(const Config& config, const std::string& modality,
                                const std::string& manifest);

struct Embeddings {
  std::vector<std::string> inputs;      // each row's file, or its text
  std::vector<std::string> modalities;  // each row's modality
  at::Tensor embedding;                 // [N, P] float, L2-normalised, the shared space
  at::Tensor pooled;                    // [N, D] float, the encoder's pooled output
};

// Embeds `files` (modality from the extension) and `texts`, files first,
// each in the order given. A file that cannot be decoded is a DataError
// naming it. Videos average their evaluation clips, as evaluation does.
Embeddings embed_inputs(InferenceModel& loaded, const Config& config,
                        const std::vector<std::string>& files, const std::vector<std::string>& texts);

// Writes a float32 matrix as NumPy's .npy format (version 1.0, C order).
void write_npy(const std::string& path, const at::Tensor& matrix);

// Writes `embeddings` to `path`: .npy contains the embedding matrix alone;
// .safetensors contains "embedding" and "pooled" with the inputs and their
// modalities as JSON lists in the metadata keys "inputs" and "modalities".
// Throws ConfigError for another extension.
void write_embeddings(const std::string& path, const Embeddings& embeddings);

struct Classification {
  std::string input;
  std::vector<std::pair<std::string, double>> top;  // class, probability; best first
};

// Zero-shot classification of `files` among `class_names`: each file's
// embedding against each class's prompt embeddings (templates from
// `prompts`, else eval.prompts, else the built-in ones), as probabilities
// from a softmax over the model's learnt logit scale. Keeps the `k` best.
std::vector<Classification> classify_files(InferenceModel& loaded, const Config& config,
                                           const std::vector<std::string>& files,
                                           const std::vector<std::string>& class_names,
                                           const std::vector<std::string>& prompts, int k);

// Class names from a file, one per line; blank lines and lines starting with
// '#' are skipped. Throws DataError naming the file when it lists none.
std::vector<std::string> read_class_names(const std::string& path);

}  // namespace imp
