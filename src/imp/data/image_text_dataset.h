// An image classification dataset held in memory, with captions made from
// each image's class name and attributes measured on its pixels.
//
// Dimension letters: B batch, C channels, T frames, H height, W width.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "imp/config/config.h"
#include "imp/data/captions.h"
#include "imp/data/dataset.h"

namespace imp {

// Modalities: image. One label set, "class". A training draw's bit 0 decides
// the flip and its other bits the caption wording.
class ImageTextDataset : public Dataset {
 public:
  // Loads the split of the fashion_mnist dataset that `config` describes.
  static std::shared_ptr<const ImageTextDataset> load(const DatasetConfig& config, bool train);

  ImageTextDataset(std::string name, at::Tensor images, at::Tensor labels,
                   std::vector<std::string> class_names, bool hflip = false,
                   int max_shift = 0);

  int64_t size() const override { return labels_.size(0); }
  int64_t num_classes() const { return static_cast<int64_t>(class_names().size()); }
  const std::vector<std::string>& class_names() const { return label_sets_[0].class_names; }
  const std::vector<LabelSet>& label_sets() const override { return label_sets_; }
  int64_t label(int64_t index, int set = 0) const override { return labels_ptr_[index]; }
  std::vector<std::string> modalities() const override { return {"image"}; }
  at::Tensor input(const std::string& modality, const std::vector<int64_t>& indices,
                   const std::vector<uint64_t>& draws) const override;
  at::Tensor eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                        int view) const override;
  std::string caption(int64_t index, uint64_t draw) const override;
  std::vector<std::string> text_corpus() const override;
  void check_model_fits(const ModelConfig& model) const override;

  // The raw images, [N, H, W] uint8, and the measured attributes of image `index`.
  const at::Tensor& raw_images() const { return images_; }
  const ImageAttributes& attributes(int64_t index) const { return attributes_[index]; }

  int64_t image_height() const { return images_.size(1); }
  int64_t image_width() const { return images_.size(2); }
  bool hflip() const { return hflip_; }  // whether training batches mirror images at random

  // Translation of an image: the pixel at (x, y) moves to (x + dx, y + dy).
  struct Shift {
    int dx = 0, dy = 0;
  };

  // Images at `indices` as [B, 1, 1, H, W] float in [-1, 1], one channel and
  // one frame. Rows with flip[i] set are mirrored left to right. Then, when
  // `shifts` is not empty, row i moves by shifts[i], and the pixels it
  // uncovers are background (-1). Written as plain loops so that batch
  // workers never start LibTorch thread pools.
  at::Tensor images(const std::vector<int64_t>& indices, const std::vector<bool>& flip,
                    const std::vector<Shift>& shifts = {}) const;


 private:
  at::Tensor images_;  // [N, H, W] uint8
  at::Tensor labels_;  // [N] int64
  const int64_t* labels_ptr_;
  std::vector<LabelSet> label_sets_;
  std::vector<ImageAttributes> attributes_;  // per image
  bool hflip_;
  int max_shift_;
};

// Throws ConfigError naming the model.vision keys when the vision embedder
// cannot take `data`'s images (channels, or a patch that does not divide them).
void check_vision_fits(const VisionConfig& vision, const ImageTextDataset& data);

}  // namespace imp
