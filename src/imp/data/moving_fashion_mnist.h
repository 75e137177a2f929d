// Moving Fashion-MNIST: short videos in which one Fashion-MNIST item moves
// left, right, up or down, turns clockwise or counterclockwise, or zooms in
// or out, on a black square canvas. Each video has two labels, the item's
// class and its motion, a caption naming both ("a sandal moving to the
// left"), and that caption spoken by a synthetic voice.
//
// A video's item, motion and path are a pure function of the dataset seed
// and the example index: the train split is made from the training images,
// the test split from the test images. Training clips are windows of
// `frames` frames at a random start; evaluation looks at `eval_clips` evenly
// spaced windows. The motion is only visible across frames: any one frame is
// a still image of the item.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "imp/data/dataset.h"
#include "imp/data/image_text_dataset.h"
#include "imp/data/speech_bank.h"

namespace imp {

enum class Motion { kLeft, kRight, kUp, kDown, kClockwise, kCounterclockwise, kZoomIn, kZoomOut };

// The motion a config name ("left", ..., "zoom_out") stands for; throws
// ConfigError for an unknown name.
Motion parse_motion(const std::string& name);

// The phrase captions use for the motion, e.g. "moving to the left". It is
// also the class name of the motion label.
std::string motion_phrase(Motion motion);

// Placement of the item over a video: its centre in pixels, its size
// relative to the 28x28 source image and its rotation in degrees (clockwise
// as seen on screen, image y axis pointing down). Each value moves linearly
// from the first frame (0) to the last (1).
struct ItemPath {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  double scale0 = 1, scale1 = 1;
  double angle0 = 0, angle1 = 0;
};

// A random path of `motion` that keeps the item on a canvas of side
// `canvas`, drawn from `bits`.
ItemPath make_item_path(Motion motion, int canvas, uint64_t bits);

// Draws `image` (side x side uint8) where `path` has it at `progress`
// (0 = first frame, 1 = last) onto `out`, canvas x canvas floats in [-1, 1]
// with -1 the black background. Bilinear sampling.
void render_frame(const uint8_t* image, int side, const ItemPath& path, double progress,
                  int canvas, float* out);

class MovingFashionMnist : public Dataset {
 public:
  // `items` is the Fashion-MNIST split the videos are made from. `speech`
  // contains the spoken captions (see caption_texts), or is null for a
  // dataset without audio.
  MovingFashionMnist(std::string name, std::shared_ptr<const ImageTextDataset> items,
                     const DatasetConfig& config, uint64_t seed,
                     std::shared_ptr<const SpeechBank> speech);

  int64_t size() const override { return items_->size(); }
  const std::vector<LabelSet>& label_sets() const override { return label_sets_; }
  int64_t label(int64_t index, int set = 0) const override;
  std::vector<std::string> modalities() const override;
  at::Tensor input(const std::string& modality, const std::vector<int64_t>& indices,
                   const std::vector<uint64_t>& draws) const override;
  int eval_views(const std::string& modality) const override;
  at::Tensor eval_input(const std::string& modality, const std::vector<int64_t>& indices,
                        int view) const override;
  std::string caption(int64_t index, uint64_t draw) const override;
  int64_t caption_group(int64_t index) const override;
  std::vector<std::string> text_corpus() const override;
  void check_model_fits(const ModelConfig& model) const override;

  // The motion and path of video `index`.
  Motion motion(int64_t index) const { return motions_[label(index, 1)]; }
  ItemPath path(int64_t index) const;

  // The whole video `index`, [1, T, canvas, canvas] with T = video_frames.
  at::Tensor video(int64_t index) const;

  // Every caption, indexed by (item x motions + motion) x wordings + wording,
  // for `class_names` and `motions`: the texts a speech bank must hold.
  static std::vector<std::string> caption_texts(const std::vector<std::string>& class_names,
                                                const std::vector<std::string>& motions);

 private:
  // Frames [first, first + count) of video `index` into `out`.
  void render(int64_t index, int first, int count, float* out) const;
  int64_t text_id(int64_t index, uint64_t draw) const;
  at::Tensor clips(const std::vector<int64_t>& indices, const std::vector<int>& starts) const;

  std::shared_ptr<const ImageTextDataset> items_;
  std::shared_ptr<const SpeechBank> speech_;
  std::vector<std::string> motion_names_;  // as in the config, e.g. "zoom_in"
  std::vector<Motion> motions_;
  std::vector<LabelSet> label_sets_;
  int frames_, video_frames_, canvas_, eval_clips_;
  uint64_t seed_;
};

}  // namespace imp
