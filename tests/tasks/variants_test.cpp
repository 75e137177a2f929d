// Multi-resolution variants: token budgets, the method's batch and DropToken
// values, resized inputs, and the tasks the trainer makes of them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "imp/data/image_text_dataset.h"
#include "imp/tasks/task.h"
#include "imp/tasks/variants.h"
#include "imp/train/trainer.h"

namespace imp {
namespace {

VisionConfig vision_with_patch(std::array<int, 3> patch) {
  VisionConfig vision;
  vision.patch = patch;
  return vision;
}

TaskConfig task_with_batch(const std::string& name, int batch) {
  TaskConfig task;
  task.name = name;
  task.dataset = "data";
  task.modalities = {"image"};
  task.objective = "softmax_ce";
  task.batch_size = batch;
  task.variants = "method";
  return task;
}

TEST(Variants, MethodValuesForFourFrameTokens) {
  // 16 frames in 4-frame patches: TF = 4, as in the method.
  const auto variants = method_variants(task_with_batch("clips", 32), vision_with_patch({4, 16, 16}),
                                        16, 224, 224);
  ASSERT_EQ(variants.size(), 3u);
  EXPECT_EQ(variants[0].config.name, "clips/half_res");
  EXPECT_DOUBLE_EQ(variants[0].config.resolution_scale, 0.5);
  EXPECT_EQ(variants[0].config.batch_size, 32);
  EXPECT_EQ(variants[1].config.name, "clips/small_batch");
  EXPECT_EQ(variants[1].config.batch_size, 8);
  EXPECT_EQ(variants[2].config.name, "clips/droptoken");
  EXPECT_DOUBLE_EQ(variants[2].config.drop_tokens, 0.75);
  for (const TaskVariant& variant : variants) {
    EXPECT_EQ(variant.budget, 32 * 4 * 14 * 14 / 4);
    EXPECT_EQ(variant.tokens, variant.budget) << variant.config.name;
    EXPECT_EQ(variant.config.variants, "none");
  }
}

TEST(Variants, MethodValuesForImages) {
  const auto variants = method_variants(task_with_batch("photos", 128), vision_with_patch({1, 16, 16}),
                                        1, 224, 224);
  ASSERT_EQ(variants.size(), 2u);
  EXPECT_EQ(variants[0].config.name, "photos/double_res");
  EXPECT_DOUBLE_EQ(variants[0].config.resolution_scale, 2.0);
  EXPECT_EQ(variants[0].config.batch_size, 32);
  EXPECT_EQ(variants[1].config.name, "photos/droptoken");
  EXPECT_EQ(variants[1].config.batch_size, 512);
  EXPECT_DOUBLE_EQ(variants[1].config.drop_tokens, 0.75);
  for (const TaskVariant& variant : variants) EXPECT_EQ(variant.tokens, 128 * 196);
}

TEST(Variants, EveryVariantWithinFivePercentOfBudget) {
  struct Shape {
    std::array<int, 3> patch;
    int64_t frames, height, width;
    int batch;
  };
  const std::vector<Shape> shapes{{{4, 16, 16}, 16, 224, 224, 32}, {{4, 7, 7}, 8, 35, 35, 32},
                                  {{4, 7, 7}, 1, 28, 28, 128},      {{2, 16, 16}, 8, 112, 160, 12},
                                  {{1, 16, 16}, 1, 160, 96, 50},    {{4, 16, 16}, 32, 256, 256, 6}};
  int checked = 0;
  for (const Shape& shape : shapes) {
    const VisionConfig vision = vision_with_patch(shape.patch);
    std::vector<std::string> skipped;
    const auto variants = method_variants(task_with_batch("t", shape.batch), vision, shape.frames,
                                          shape.height, shape.width, &skipped);
    EXPECT_EQ(variants.size() + skipped.size(), shape.frames > shape.patch[0] ? 3u : 2u);
    for (const TaskVariant& variant : variants) {
      // Recount the tokens from the variant's own settings.
      const int64_t h = scaled_side(shape.height, variant.config.resolution_scale, shape.patch[1]);
      const int64_t w = scaled_side(shape.width, variant.config.resolution_scale, shape.patch[2]);
      const int64_t tokens = variant.config.batch_size *
                             vision_tokens(vision, shape.frames, h, w, variant.config.drop_tokens);
      EXPECT_EQ(tokens, variant.tokens) << variant.config.name;
      EXPECT_LE(std::abs(static_cast<double>(tokens - variant.budget)), 0.05 * variant.budget)
          << variant.config.name << " of " << shape.height << "x" << shape.width;
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
}

TEST(Variants, GridTooSmallToHalveIsLeftOut) {
  // 35x35 in 7x7 patches is a 5x5 grid: scaled by 1/sqrt(2) it rounds to
  // 4x4, 28% over the budget.
  std::vector<std::string> skipped;
  const auto variants = method_variants(task_with_batch("clips", 32), vision_with_patch({4, 7, 7}), 8, 35,
                                        35, &skipped);
  ASSERT_EQ(variants.size(), 2u);
  EXPECT_EQ(variants[0].config.name, "clips/small_batch");
  EXPECT_EQ(variants[1].config.name, "clips/droptoken");
  EXPECT_DOUBLE_EQ(variants[1].config.drop_tokens, 0.5);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("half_res"), std::string::npos) << skipped[0];
}

std::shared_ptr<const ImageTextDataset> ramp_images() {
  // 4 images of 8x8 pixels, each a horizontal ramp.
  torch::Tensor images = (torch::arange(8, torch::kLong) * 30).to(torch::kByte).expand({4, 8, 8}).contiguous();
  return std::make_shared<const ImageTextDataset>("data", images, torch::arange(4, torch::kLong) % 2,
                                                  std::vector<std::string>{"a", "b"}, /*hflip=*/false);
}

struct PlainTask : Task {
  using Task::Task;
  TaskOutput compute_loss(ImpModel&, const Batch&) const override { return {}; }
};

TEST(Variants, ResolutionScaleResizesToWholePatches) {
  TaskConfig config = task_with_batch("data", 2);
  config.resolution_scale = 2.0;
  PlainTask doubled(config, ramp_images(), 1);
  doubled.set_vision_patch({1, 4, 4});
  EXPECT_EQ(doubled.make_batch(0).inputs.at("image").sizes(), torch::IntArrayRef({2, 1, 1, 16, 16}));
  config.resolution_scale = 0.5;
  PlainTask halved(config, ramp_images(), 1);
  halved.set_vision_patch({1, 4, 4});
  torch::Tensor small = halved.make_batch(0).inputs.at("image");
  ASSERT_EQ(small.sizes(), torch::IntArrayRef({2, 1, 1, 4, 4}));
  // The ramp survives: each row still rises from left to right.
  torch::Tensor row = small[0][0][0][0];
  for (int64_t x = 1; x < 4; ++x) EXPECT_GT(row[x].item<float>(), row[x - 1].item<float>());
}

TEST(Variants, TrainerFamilyFromTheFirstExample) {
  VisionConfig vision = vision_with_patch({1, 4, 4});
  const auto family = with_variants(task_with_batch("data", 16), *ramp_images(), vision);
  ASSERT_EQ(family.size(), 3u);
  EXPECT_EQ(family[0].name, "data");
  EXPECT_EQ(family[1].name, "data/double_res");
  EXPECT_EQ(family[1].batch_size, 4);
  EXPECT_EQ(family[2].name, "data/droptoken");
  EXPECT_EQ(family[2].batch_size, 64);
  TaskConfig plain = task_with_batch("data", 16);
  plain.variants = "none";
  EXPECT_EQ(with_variants(plain, *ramp_images(), vision).size(), 1u);
}

}  // namespace
}  // namespace imp
