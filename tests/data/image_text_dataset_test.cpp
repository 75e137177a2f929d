// Training images of ImageTextDataset: flips and random shifts.
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include <ATen/ATen.h>

#include "imp/data/image_text_dataset.h"

namespace imp {
namespace {

// Two 8x8 images, dark but for one bright pixel: image 0 at (x 2, y 5),
// image 1 at (x 7, y 0).
std::shared_ptr<const ImageTextDataset> dot_dataset(int max_shift) {
  at::Tensor images = at::zeros({2, 8, 8}, at::kByte);
  images[0][5][2] = 255;
  images[1][0][7] = 255;
  at::Tensor labels = at::arange(2, at::kLong);
  return std::make_shared<const ImageTextDataset>("dots", images, labels,
                                                  std::vector<std::string>{"a", "b"},
                                                  /*hflip=*/false, max_shift);
}

// (x, y) of the brightest pixel of an image [1, 1, H, W].
std::pair<int64_t, int64_t> bright_pixel(const at::Tensor& image) {
  const int64_t index = image.flatten().argmax().item<int64_t>();
  return {index % image.size(-1), index / image.size(-1)};
}

TEST(ImageShift, MovesPixelsByShift) {
  auto data = dot_dataset(0);
  at::Tensor out = data->images({0}, {}, {ImageTextDataset::Shift{3, -2}});
  EXPECT_EQ(bright_pixel(out[0]), std::make_pair(int64_t{5}, int64_t{3}));
  EXPECT_FLOAT_EQ(out.max().item<float>(), 1.0f);
  EXPECT_EQ((out > -1.0f).sum().item<int64_t>(), 1);
}

TEST(ImageShift, PixelsLeavingTheFrameAreDropped) {
  auto data = dot_dataset(0);
  at::Tensor out = data->images({1}, {}, {ImageTextDataset::Shift{1, 0}});
  EXPECT_FLOAT_EQ(out.max().item<float>(), -1.0f);
}

TEST(ImageShift, FlipComesBeforeShift) {
  auto data = dot_dataset(0);
  // Mirrored, the dot of image 0 sits at x = 5. Shifted by -4, it lands at 1.
  at::Tensor out = data->images({0}, {true}, {ImageTextDataset::Shift{-4, 1}});
  EXPECT_EQ(bright_pixel(out[0]), std::make_pair(int64_t{1}, int64_t{6}));
}

TEST(ImageShift, TrainingDrawsCoverTheRange) {
  auto data = dot_dataset(2);
  std::set<std::pair<int64_t, int64_t>> seen;
  for (uint64_t draw = 0; draw < 400; ++draw) {
    at::Tensor out = data->input("image", {0}, {draw});
    const auto [x, y] = bright_pixel(out[0][0]);
    EXPECT_GE(x, 0) << draw;
    EXPECT_LE(x, 4) << draw;
    EXPECT_GE(y, 3) << draw;
    EXPECT_LE(y, 7) << draw;
    seen.insert({x, y});
    // The same draw gives the same image.
    EXPECT_TRUE(at::equal(out, data->input("image", {0}, {draw}))) << draw;
  }
  EXPECT_EQ(seen.size(), 25u);
}

TEST(ImageShift, ZeroMaxShiftLeavesImagesInPlace) {
  auto data = dot_dataset(0);
  for (uint64_t draw = 0; draw < 20; ++draw) {
    EXPECT_EQ(bright_pixel(data->input("image", {0}, {draw})[0][0]),
              std::make_pair(int64_t{2}, int64_t{5}));
  }
}

TEST(ImageShift, EvaluationImagesAreNeverShifted) {
  auto data = dot_dataset(3);
  EXPECT_EQ(bright_pixel(data->eval_input("image", {0}, 0)[0][0]),
            std::make_pair(int64_t{2}, int64_t{5}));
}

}  // namespace
}  // namespace imp
