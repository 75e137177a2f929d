// The interface every data source offers to tasks and to evaluation: labelled
// examples with one or more input modalities and a caption.
//
// Randomness is counter based. A task gives each example of a training batch
// a 64-bit `draw`; the dataset derives from it every random choice for that
// example (flip, clip start, caption wording, spoken version), so that all
// modalities of one example agree and batches do not depend on threads.
// Evaluation uses fixed draws (eval_draw) and fixed views instead.
//
// Dimension letters: B batch, C channels, T frames, H height, W width,
// M mel bands, F spectrogram frames.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "imp/config/config.h"
#include "imp/data/sample_failures.h"
#include "imp/data/speech_bank.h"

namespace imp {

// One way of labelling the examples, e.g. Fashion-MNIST's item classes, or
// the motion of a video.
struct LabelSet {
  std::string name;                      // "class", "item", "motion"
  std::vector<std::string> class_names;  // indexed by label
  // Zero-shot prompt templates ("{}" = class name) made for this set; empty
  // means the evaluation's general prompts fit (eval.prompts or built-in).
  std::vector<std::string> prompts;
  // Examples may have several labels of this set (Dataset::label_list);
  // label() then gives the first.
  bool multi_label = false;
};

class Dataset {
 public:
  explicit Dataset(std::string name) : name_(std::move(name)) {}
  virtual ~Dataset() = default;

  const std::string& name() const { return name_; }
  virtual int64_t size() const = 0;

  // Label sets; the first is the default one.
  virtual const std::vector<LabelSet>& label_sets() const = 0;
  // Index of the label set called `name`; the empty name is the first set.
  // Throws ConfigError listing the sets when there is no such set.
  int label_set_index(const std::string& name) const;
  virtual int64_t label(int64_t index, int set = 0) const = 0;
  at::Tensor labels(const std::vector<int64_t>& indices, int set = 0) const;  // [B] int64
  // Every label of example `index` in `set`; by default label() alone, or
  // none when it is -1 (no label).
  virtual std::vector<int64_t> label_list(int64_t index, int set = 0) const;
  // Multi-hot targets [B, K] float of label_list, K = the set's class count.
  at::Tensor targets(const std::vector<int64_t>& indices, int set = 0) const;

  // Input modalities besides text, the first being the dataset's own
  // ("image", "video" or "audio"); every dataset also has captions.
  virtual std::vector<std::string> modalities() const = 0;
  bool has_modality(const std::string& modality) const;

  // Training inputs of `modality` for the examples at `indices`, with one
  // draw per example:
  //   image, video: [B, C, T, H, W] float in [-1, 1]
  //   audio:        [B, M, F] float, normalised log-mel spectrogram
  // Thread-safe.
  virtual at::Tensor input(const std::string& modality, const std::vector<int64_t>& indices,
                           const std::vector<uint64_t>& draws) const = 0;

  // Evaluation inputs: deterministic, without augmentation. A video is seen
  // through several views (temporal clips) whose outputs are averaged;
  // `view` is in [0, eval_views(modality)).
  virtual int eval_views(const std::string& modality) const { return 1; }
  virtual at::Tensor eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                                int view) const = 0;

  // The caption of example `index` in the wording `draw` selects. Spoken
  // audio of an example says the caption of the same draw.
  virtual std::string caption(int64_t index, uint64_t draw) const = 0;

  // The fixed draw of example `index` for evaluation.
  static uint64_t eval_draw(int64_t index);

  // Examples whose captions mean the same thing share a caption group (they
  // are positives of each other in NCE and in retrieval); -1 when only
  // identical caption texts should count as the same.
  virtual int64_t caption_group(int64_t index) const { return -1; }

  // Every text this dataset's captions and prompts can contain, without
  // duplicates: what the tokenizer is trained on.
  virtual std::vector<std::string> text_corpus() const = 0;

  // Throws ConfigError naming the model keys when the model cannot take this
  // dataset's inputs (e.g. a patch size that does not divide the images).
  virtual void check_model_fits(const ModelConfig& model) const = 0;

  // The order in which one epoch visits the examples, given a seed that
  // differs per task and epoch. The default is a uniform permutation;
  // datasets read from shards keep reads local instead.
  virtual std::vector<int64_t> epoch_order(uint64_t epoch_seed) const;

  // Datasets that decode files can fail on single examples. For them the
  // training pipeline builds batches one example at a time through
  // example_inputs, skips an example that throws DecodeError, and counts it
  // in failures(). Datasets held in memory never fail and return null.
  virtual SampleFailures* failures() const { return nullptr; }
  // Training inputs of several modalities of one example, each without the
  // batch dimension. Throws DecodeError when the example cannot give one.
  virtual std::map<std::string, at::Tensor> example_inputs(const std::vector<std::string>& modalities,
                                                           int64_t index, uint64_t draw) const;
  // Names example `index` in messages, e.g. "shards/a.tar:000123".
  virtual std::string example_name(int64_t index) const;

 private:
  std::string name_;
};

// Speech settings of `config` for one split: the training voices, or for the
// test split the evaluation voices only. Waveforms are cached under
// <cache_dir>/speech.
SpeechBankOptions speech_options(const DatasetConfig& config, bool train,
                                 const std::string& cache_dir);

// Loads the train or test split of the dataset `config` describes. Spoken
// audio is rendered for `model.audio` and cached under `cache_dir`. Datasets
// of files (webdataset, manifest) are loaded once per process and split:
// later calls return the same object.
std::shared_ptr<const Dataset> load_dataset(const DatasetConfig& config, const ModelConfig& model,
                                            bool train, const std::string& cache_dir);

// Name of the classifier head for `label_set` of `dataset`: the dataset's
// name for its first label set, "<dataset>_<set>" for the others.
std::string classifier_name(const Dataset& dataset, int label_set);

}  // namespace imp
