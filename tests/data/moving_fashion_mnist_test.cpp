#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "imp/core/error.h"
#include "imp/data/image_text_dataset.h"
#include "imp/data/moving_fashion_mnist.h"

namespace imp {
namespace {

constexpr double kPi = 3.14159265358979323846;

// 64 identical 28x28 items: a bright 6x6 block above the centre, so that
// both the item's position and its rotation show in the centre of mass.
std::shared_ptr<const ImageTextDataset> marker_items() {
  torch::Tensor images = torch::zeros({64, 28, 28}, torch::kByte);
  images.narrow(1, 4, 6).narrow(2, 11, 6).fill_(255);
  torch::Tensor labels = torch::arange(64, torch::kLong) % 10;
  std::vector<std::string> names = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                    "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
  return std::make_shared<const ImageTextDataset>("items", images, labels, names);
}

DatasetConfig video_config() {
  DatasetConfig config;
  config.name = "videos";
  config.type = "moving_fashion_mnist";
  return config;  // 8-frame clips of 12-frame videos on a 35x35 canvas, 8 motions
}

struct Moments {
  double x = 0, y = 0;  // centre of mass, pixels
  double spread = 0;    // root mean square distance from it
};

// Intensity moments of one frame [H, W] in [-1, 1] (background -1).
Moments moments(const torch::Tensor& frame) {
  torch::Tensor mass = (frame.to(torch::kDouble) + 1.0).clamp_min(0.0);
  const int64_t H = mass.size(0), W = mass.size(1);
  torch::Tensor ys = torch::arange(H, torch::kDouble).unsqueeze(1).expand({H, W}) + 0.5;
  torch::Tensor xs = torch::arange(W, torch::kDouble).unsqueeze(0).expand({H, W}) + 0.5;
  const double total = mass.sum().item<double>();
  Moments m;
  m.x = (mass * xs).sum().item<double>() / total;
  m.y = (mass * ys).sum().item<double>() / total;
  torch::Tensor d2 = (xs - m.x).pow(2) + (ys - m.y).pow(2);
  m.spread = std::sqrt((mass * d2).sum().item<double>() / total);
  return m;
}

TEST(MovingFashionMnist, SameSeedSameVideosOtherSeedOthers) {
  auto items = marker_items();
  MovingFashionMnist a("videos", items, video_config(), 7, nullptr);
  MovingFashionMnist b("videos", items, video_config(), 7, nullptr);
  MovingFashionMnist c("videos", items, video_config(), 8, nullptr);
  int differing = 0;
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_TRUE(torch::equal(a.video(i), b.video(i))) << "video " << i;
    EXPECT_EQ(a.label(i, 1), b.label(i, 1));
    differing += torch::equal(a.video(i), c.video(i)) ? 0 : 1;
  }
  EXPECT_GE(differing, 12);
}

TEST(MovingFashionMnist, MotionLabelMatchesThePixels) {
  auto items = marker_items();
  MovingFashionMnist data("videos", items, video_config(), 3, nullptr);
  std::map<Motion, int> seen;
  for (int64_t i = 0; i < data.size(); ++i) {
    const Motion motion = data.motion(i);
    seen[motion] += 1;
    torch::Tensor video = data.video(i)[0];  // [T, H, W]
    const Moments first = moments(video[0]), last = moments(video[video.size(0) - 1]);
    const double dx = last.x - first.x, dy = last.y - first.y;
    const ItemPath path = data.path(i);
    // Angle of the marker around the item centre; in image coordinates
    // (y down) a clockwise turn on screen increases atan2(y, x).
    const double a0 = std::atan2(first.y - path.y0, first.x - path.x0);
    const double a1 = std::atan2(last.y - path.y1, last.x - path.x1);
    const double turn = std::remainder(a1 - a0, 2 * kPi) * 180.0 / kPi;
    switch (motion) {
      case Motion::kLeft: EXPECT_LT(dx, -5.0) << i; EXPECT_NEAR(dy, 0.0, 0.5) << i; break;
      case Motion::kRight: EXPECT_GT(dx, 5.0) << i; EXPECT_NEAR(dy, 0.0, 0.5) << i; break;
      case Motion::kUp: EXPECT_LT(dy, -5.0) << i; EXPECT_NEAR(dx, 0.0, 0.5) << i; break;
      case Motion::kDown: EXPECT_GT(dy, 5.0) << i; EXPECT_NEAR(dx, 0.0, 0.5) << i; break;
      case Motion::kClockwise: EXPECT_GT(turn, 45.0) << i; break;
      case Motion::kCounterclockwise: EXPECT_LT(turn, -45.0) << i; break;
      case Motion::kZoomIn: EXPECT_GT(last.spread, 1.4 * first.spread) << i; break;
      case Motion::kZoomOut: EXPECT_LT(last.spread, first.spread / 1.4) << i; break;
    }
  }
  EXPECT_EQ(seen.size(), 8u) << "64 videos should show all 8 motions";
}

TEST(MovingFashionMnist, ItemStaysOnTheCanvas) {
  // All of the item's mass is drawn in every frame: nothing leaves the canvas.
  auto items = marker_items();
  MovingFashionMnist data("videos", items, video_config(), 5, nullptr);
  for (int64_t i = 0; i < data.size(); ++i) {
    const ItemPath path = data.path(i);
    torch::Tensor video = data.video(i)[0];
    for (int64_t f = 0; f < video.size(0); f += 5) {
      const double progress = static_cast<double>(f) / (video.size(0) - 1);
      const double scale = path.scale0 + (path.scale1 - path.scale0) * progress;
      const double drawn = ((video[f] + 1.0) / 2.0).sum().item<double>();
      // The marker covers 36 pixels of the source image at full intensity;
      // resampling keeps its area up to the blur at its edges.
      const double area = 36.0 * scale * scale;
      EXPECT_NEAR(drawn, area, 0.25 * area) << "video " << i << " frame " << f;
    }
  }
}

TEST(MovingFashionMnist, ClipsAreWindowsOfTheVideo) {
  auto items = marker_items();
  MovingFashionMnist data("videos", items, video_config(), 1, nullptr);
  const std::vector<int64_t> indices = {3, 9};
  torch::Tensor train = data.input("video", indices, {11, 12});
  ASSERT_EQ(train.sizes(), torch::IntArrayRef({2, 1, 8, 35, 35}));
  for (size_t b = 0; b < indices.size(); ++b) {
    torch::Tensor whole = data.video(indices[b]);  // [1, 12, 35, 35]
    bool found = false;
    for (int start = 0; start <= 4; ++start) {
      found |= torch::equal(train[b], whole.narrow(1, start, 8));
    }
    EXPECT_TRUE(found) << "training clip " << b << " is no 8-frame window of its video";
  }
  // Evaluation clips run from the first window to the last.
  ASSERT_EQ(data.eval_views("video"), 8);
  torch::Tensor whole = data.video(3);
  EXPECT_TRUE(torch::equal(data.eval_input("video", {3}, 0)[0], whole.narrow(1, 0, 8)));
  EXPECT_TRUE(torch::equal(data.eval_input("video", {3}, 7)[0], whole.narrow(1, 4, 8)));
}

TEST(MovingFashionMnist, CaptionsNameItemAndMotion) {
  auto items = marker_items();
  MovingFashionMnist data("videos", items, video_config(), 2, nullptr);
  for (int64_t i = 0; i < 20; ++i) {
    for (uint64_t draw = 0; draw < 8; ++draw) {
      const std::string caption = data.caption(i, draw);
      EXPECT_NE(caption.find(items->class_names()[items->label(i)]), std::string::npos) << caption;
      EXPECT_NE(caption.find(motion_phrase(data.motion(i))), std::string::npos) << caption;
    }
    EXPECT_EQ(data.caption_group(i), data.label(i, 0) * 8 + data.label(i, 1));
  }
  EXPECT_EQ(data.caption(0, 0).rfind("a", 0), 0u);
  // Every caption is among the texts a speech bank is built for.
  const auto texts = MovingFashionMnist::caption_texts(items->class_names(), video_config().motions);
  EXPECT_EQ(texts.size(), 10u * 8u * 4u);
  for (int64_t i = 0; i < 20; ++i) {
    EXPECT_NE(std::find(texts.begin(), texts.end(), data.caption(i, 5)), texts.end());
  }
}

TEST(MovingFashionMnist, LabelSetsAndErrors) {
  auto items = marker_items();
  DatasetConfig config = video_config();
  config.motions = {"left", "zoom_in"};
  MovingFashionMnist data("videos", items, config, 2, nullptr);
  ASSERT_EQ(data.label_sets().size(), 2u);
  EXPECT_EQ(data.label_sets()[1].class_names,
            (std::vector<std::string>{"moving to the left", "zooming in"}));
  EXPECT_EQ(data.label_set_index("motion"), 1);
  EXPECT_EQ(data.label_set_index(""), 0);
  EXPECT_THROW(data.label_set_index("colour"), ConfigError);
  EXPECT_EQ(classifier_name(data, 1), "videos_motion");
  EXPECT_THROW(data.input("audio", {0}, {0}), ConfigError);  // built without speech

  ModelConfig model;
  model.vision.channels = 1;
  model.vision.patch = {4, 7, 7};
  EXPECT_NO_THROW(data.check_model_fits(model));
  model.vision.patch = {4, 8, 8};
  EXPECT_THROW(data.check_model_fits(model), ConfigError);
  model.vision.patch = {3, 7, 7};
  EXPECT_THROW(data.check_model_fits(model), ConfigError);
}

}  // namespace
}  // namespace imp
