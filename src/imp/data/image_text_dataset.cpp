#include "imp/data/image_text_dataset.h"

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/fashion_mnist.h"

namespace imp {

namespace {

// Salt that makes a training image's shift independent of its other draws.
constexpr uint64_t kShiftSalt = 0x5b1f7c3aULL;

}  // namespace

std::shared_ptr<const ImageTextDataset> ImageTextDataset::load(const DatasetConfig& config,
                                                               bool train) {
  IMP_REQUIRE(ConfigError, config.type == "fashion_mnist", "dataset '", config.name,
              "' has type '", config.type, "'; the only supported type is fashion_mnist");
  ImageClassData data = load_fashion_mnist(config.root, train);
  return std::make_shared<const ImageTextDataset>(config.name, data.images, data.labels,
                                                  data.class_names, train && config.hflip,
                                                  train ? config.max_shift : 0);
}

ImageTextDataset::ImageTextDataset(std::string name, at::Tensor images, at::Tensor labels,
                                   std::vector<std::string> class_names, bool hflip,
                                   int max_shift)
    : Dataset(std::move(name)),
      images_(images.contiguous()),
      labels_(labels.to(at::kLong).contiguous()),
      labels_ptr_(labels_.data_ptr<int64_t>()),
      label_sets_{LabelSet{"class", std::move(class_names), {}}},
      hflip_(hflip),
      max_shift_(max_shift) {
  TORCH_CHECK(images_.dim() == 3 && images_.scalar_type() == at::kByte,
              "images must be [N, H, W] uint8, got ", images_.sizes(), " ", images_.scalar_type());
  TORCH_CHECK(images_.size(0) == labels_.size(0), "dataset '", Dataset::name(), "' has ", images_.size(0),
              " images but ", labels_.size(0), " labels");
  attributes_.reserve(images_.size(0));
  for (int64_t i = 0; i < images_.size(0); ++i) attributes_.push_back(image_attributes(images_[i]));
}

at::Tensor ImageTextDataset::images(const std::vector<int64_t>& indices,
                                    const std::vector<bool>& flip,
                                    const std::vector<Shift>& shifts) const {
  const int64_t B = static_cast<int64_t>(indices.size());
  const int64_t H = images_.size(1), W = images_.size(2);
  at::Tensor out = at::empty({B, 1, 1, H, W}, at::kFloat);
  const uint8_t* src = images_.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* image = src + indices[b] * H * W;
    const bool mirror = !flip.empty() && flip[b];
    const Shift shift = shifts.empty() ? Shift{} : shifts[b];
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        // Output pixel (x, y) shows source pixel (x - dx, y - dy).
        const int64_t sx = x - shift.dx, sy = y - shift.dy;
        if (sx < 0 || sx >= W || sy < 0 || sy >= H) {
          *dst++ = -1.0f;
          continue;
        }
        const uint8_t value = image[sy * W + (mirror ? W - 1 - sx : sx)];
        *dst++ = value * (2.0f / 255.0f) - 1.0f;
      }
    }
  }
  return out;
}

at::Tensor ImageTextDataset::input(const std::string& modality, const std::vector<int64_t>& indices,
                                   const std::vector<uint64_t>& draws) const {
  IMP_REQUIRE(ConfigError, modality == "image", "dataset '", Dataset::name(), "' has images, not ", modality);
  std::vector<bool> flip(indices.size(), false);
  for (size_t b = 0; b < indices.size(); ++b) flip[b] = hflip_ && (draws[b] & 1) != 0;
  if (max_shift_ == 0) return images(indices, flip);

  // The shift comes from its own hash of the draw, independent of the flip
  // bit and of the caption wording (the draw's other bits).
  std::vector<Shift> shifts(indices.size());
  const uint64_t choices = 2 * static_cast<uint64_t>(max_shift_) + 1;
  for (size_t b = 0; b < indices.size(); ++b) {
    const uint64_t bits = mix64(draws[b], kShiftSalt);
    shifts[b].dx = static_cast<int>(below(bits, choices)) - max_shift_;
    shifts[b].dy = static_cast<int>(below(bits >> 32, choices)) - max_shift_;
  }
  return images(indices, flip, shifts);
}

at::Tensor ImageTextDataset::eval_input(const std::string& modality,
                                        const std::vector<int64_t>& indices, int view) const {
  IMP_REQUIRE(ConfigError, modality == "image", "dataset '", Dataset::name(), "' has images, not ", modality);
  return images(indices, {});
}

std::string ImageTextDataset::caption(int64_t index, uint64_t draw) const {
  return make_caption(class_names()[labels_ptr_[index]], attributes_[index], draw >> 1);
}

std::vector<std::string> ImageTextDataset::text_corpus() const {
  return caption_corpus(class_names());
}

void ImageTextDataset::check_model_fits(const ModelConfig& model) const {
  check_vision_fits(model.vision, *this);
}

void check_vision_fits(const VisionConfig& vision, const ImageTextDataset& data) {
  const int64_t height = data.image_height(), width = data.image_width();
  IMP_REQUIRE(ConfigError, vision.channels == 1, "dataset '", data.name(),
              "' has grey images (1 channel) but model.vision.channels is ", vision.channels,
              "; set model.vision.channels=1");
  IMP_REQUIRE(ConfigError, height % vision.patch[1] == 0 && width % vision.patch[2] == 0,
              "dataset '", data.name(), "' has ", height, "x", width,
              " images, which model.vision.patch ", vision.patch[1], "x", vision.patch[2],
              " does not divide; choose a patch that divides them, e.g. "
              "model.vision.patch=[4,7,7] with model.vision.grid=[2,4,4] for 28x28");
}

}  // namespace imp
