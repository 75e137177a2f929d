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

namespace imp {

class ImageTextDataset {
 public:
  // Loads the split of the dataset that `config` describes.
  static std::shared_ptr<const ImageTextDataset> load(const DatasetConfig& config, bool train);

  ImageTextDataset(std::string name, at::Tensor images, at::Tensor labels,
                   std::vector<std::string> class_names, bool hflip = false);

  const std::string& name() const { return name_; }
  int64_t size() const { return labels_.size(0); }
  int64_t num_classes() const { return static_cast<int64_t>(class_names_.size()); }
  const std::vector<std::string>& class_names() const { return class_names_; }
  int64_t image_height() const { return images_.size(1); }
  int64_t image_width() const { return images_.size(2); }
  bool hflip() const { return hflip_; }  // whether training batches mirror images at random

  // Images at `indices` as [B, 1, 1, H, W] float in [-1, 1], one channel and
  // one frame. Rows with flip[i] set are mirrored left to right. Written as
  // plain loops so that batch workers never start LibTorch thread pools.
  at::Tensor images(const std::vector<int64_t>& indices, const std::vector<bool>& flip) const;

  at::Tensor labels(const std::vector<int64_t>& indices) const;  // [B] int64
  int64_t label(int64_t index) const { return labels_ptr_[index]; }

  // Caption of image `index` in wording `variant` (any integer; the template
  // is chosen from it).
  std::string caption(int64_t index, uint64_t variant) const;

 private:
  std::string name_;
  at::Tensor images_;  // [N, H, W] uint8
  at::Tensor labels_;  // [N] int64
  const int64_t* labels_ptr_;
  std::vector<std::string> class_names_;
  std::vector<ImageAttributes> attributes_;  // per image
  bool hflip_;
};

}  // namespace imp
