// The user's own data: samples kept as WebDataset tar shards (files of one
// sample share a key: 000123.jpg, 000123.txt, 000123.json) or as loose files
// listed in a CSV or JSON Lines manifest (data/manifest.h).
//
// Loading indexes the samples (tar headers only; captions and labels are read
// then) and keeps, per sample, where each modality's bytes are. Inputs are
// decoded when a batch is built: images with OpenCV, video with FFmpeg, audio
// with libsndfile. A sample that fails to decode is skipped and counted
// (Dataset::failures); a sample that lacks a part a task needs is skipped
// the same way. Nothing is ever replaced by zeros.
//
// Training order (epoch_order): for shards, the shard order is shuffled per
// epoch, as WebDataset readers do. Samples are read in tar order and pass a
// shuffle buffer that mixes neighbouring shards. Manifests get a uniform
// permutation. Both are functions of the seed and epoch, so a run resumes its
// data stream from a batch index.
//
// Data-parallel runs give each rank its own shards: shard i belongs to rank
// i mod world_size. With fewer shards than ranks, every rank reads every
// shard and keeps sample j when j mod world_size is its rank.
//
// The test split is checked when it is loaded: every sample is decoded once,
// and samples that fail, or lack the caption or label that others have, are
// left out and reported, so evaluation sees a fixed set of samples whatever
// the number of workers.
#pragma once

#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "imp/data/dataset.h"

namespace imp {

// The location of one part of a sample: a member of a tar shard, or a file.
struct SampleSource {
  std::string path;        // shard or file
  bool in_shard = false;
  uint64_t offset = 0;     // of the member's data in the shard
  uint64_t size = 0;
  std::string extension;   // lower case, e.g. "jpg"
};

struct FileSample {
  std::string name;                              // "shards/a.tar:000123" or "train.csv line 5"
  int shard = -1;                                // index into the shard list; -1 for manifests
  // Modality -> its file. Without an "audio" entry, audio comes from the
  // video's sound track.
  std::map<std::string, SampleSource> sources;
  std::string members;                           // shards: the sample's member extensions, for messages
  bool has_caption = false;
  std::string caption;
  std::vector<std::string> label_texts;          // as written in the data; empty = none
  std::vector<int64_t> labels;                   // indices into the class names
};

// The bytes of one part of a sample. Throws DecodeError "<modality>: cannot
// open" naming `sample` when the file cannot be read.
std::string read_sample_source(const SampleSource& source, const std::string& modality,
                               const std::string& sample);

class FileDataset : public Dataset {
 public:
  struct Options {
    bool train = true;
    int rank = 0;              // this process's part of the train split
    int world_size = 1;
    std::string cache_dir = "cache";
    std::ostream* log = nullptr;  // warnings about skipped samples; null = quiet
    bool remember_classes = true; // write the classes derived from the data under cache_dir
    std::string description;      // names the data in messages; empty = "dataset 'NAME' (SPLIT)"
  };

  // Loads the split that options.train selects of a `webdataset` or
  // `manifest` dataset. Throws ConfigError when the config names no data for
  // the split, DataError when the data cannot be read at all (no shard can be
  // opened, a shard splits a sample, every sample fails).
  FileDataset(const DatasetConfig& config, const ModelConfig& model, Options options);

  // The shared instance for this config, split and rank: loaded on first use.
  static std::shared_ptr<const FileDataset> load(const DatasetConfig& config, const ModelConfig& model,
                                                 bool train, const std::string& cache_dir);

  int64_t size() const override { return static_cast<int64_t>(samples_.size()); }
  const std::vector<LabelSet>& label_sets() const override { return label_sets_; }
  int64_t label(int64_t index, int set = 0) const override;
  std::vector<int64_t> label_list(int64_t index, int set = 0) const override {
    return samples_.at(index).labels;
  }
  std::vector<std::string> modalities() const override { return modalities_; }
  at::Tensor input(const std::string& modality, const std::vector<int64_t>& indices,
                   const std::vector<uint64_t>& draws) const override;
  int eval_views(const std::string& modality) const override;
  at::Tensor eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                        int view) const override;
  // Throws DecodeError "caption: missing" for a sample without one.
  std::string caption(int64_t index, uint64_t draw) const override;
  std::vector<std::string> text_corpus() const override;
  void check_model_fits(const ModelConfig& model) const override;
  std::vector<int64_t> epoch_order(uint64_t epoch_seed) const override;
  SampleFailures* failures() const override { return failures_.get(); }
  std::map<std::string, at::Tensor> example_inputs(const std::vector<std::string>& modalities,
                                                   int64_t index, uint64_t draw) const override;
  std::string example_name(int64_t index) const override { return samples_.at(index).name; }

  const std::vector<FileSample>& samples() const { return samples_; }
  const std::vector<std::string>& shards() const { return shards_; }
  // What loading skipped, per reason (shard problems, manifest rows, labels
  // outside the class list, test samples that failed their check).
  const std::map<std::string, int64_t>& load_problems() const { return load_problems_; }
  // The first message of each reason in load_problems().
  const std::map<std::string, std::string>& load_problem_messages() const { return load_messages_; }
  int64_t image_height() const { return height_; }
  int64_t image_width() const { return width_; }

  // Decoded inputs of one sample: training view (train true, from `draw`) or
  // evaluation view `view`. Throws DecodeError.
  std::map<std::string, at::Tensor> decode(const std::vector<std::string>& modalities,
                                           int64_t index, bool train, uint64_t draw, int view) const;

 private:
  void index_shards(const std::vector<std::string>& patterns);
  void index_manifest(const std::string& path);
  void assign_labels(const DatasetConfig& config, const std::string& cache_dir);
  void check_test_samples();
  void note_problem(const std::string& reason, const std::string& message);

  std::string source_;  // "dataset 'x' (train)", for messages
  DatasetConfig config_;
  AudioConfig audio_;
  int channels_ = 3;
  int64_t height_ = 0, width_ = 0;
  bool train_ = true;
  int rank_ = 0, world_size_ = 1;
  std::ostream* log_ = nullptr;
  bool remember_classes_ = true;
  std::vector<std::string> shards_;
  std::vector<FileSample> samples_;
  std::vector<std::string> modalities_;
  std::vector<LabelSet> label_sets_;
  std::map<std::string, int64_t> load_problems_;
  std::map<std::string, std::string> load_messages_;
  std::unique_ptr<SampleFailures> failures_;
};

}  // namespace imp
