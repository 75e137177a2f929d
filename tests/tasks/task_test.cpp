#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "imp/data/image_text_dataset.h"
#include "imp/data/moving_fashion_mnist.h"
#include "imp/tasks/task.h"
#include "imp/core/error.h"
#include "imp/train/prefetcher.h"
#include "imp/train/trainer.h"

namespace imp {
namespace {

// 10 distinct 4x4 images: image i has every pixel equal to 10 * i.
std::shared_ptr<const ImageTextDataset> tiny_dataset(bool hflip) {
  torch::Tensor images = (torch::arange(10, torch::kLong) * 10).to(torch::kByte).reshape({10, 1, 1})
                             .expand({10, 4, 4}).contiguous();
  torch::Tensor labels = torch::arange(10, torch::kLong) % 3;
  return std::make_shared<const ImageTextDataset>("tiny", images, labels,
                                                  std::vector<std::string>{"a", "b", "c"}, hflip);
}

TaskConfig classification_config(int batch_size) {
  TaskConfig config;
  config.name = "tiny_cls";
  config.dataset = "tiny";
  config.modalities = {"image"};
  config.objective = "softmax_ce";
  config.batch_size = batch_size;
  return config;
}

// Dataset index of each row of a batch, recovered from the pixel value.
std::vector<int64_t> batch_indices(const Batch& batch) {
  torch::Tensor pixel = batch.inputs.at(kImage).select(2, 0).select(1, 0).select(1, 0).select(1, 0);
  torch::Tensor index = ((pixel + 1.0f) * (255.0f / 2.0f) / 10.0f).round().to(torch::kLong);
  return std::vector<int64_t>(index.data_ptr<int64_t>(), index.data_ptr<int64_t>() + index.numel());
}

TEST(TaskBatches, EachEpochVisitsEveryExampleOnce) {
  ClassificationTask task(classification_config(5), tiny_dataset(false), 3);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::multiset<int64_t> seen;
    for (int b = 0; b < 2; ++b) {
      for (int64_t i : batch_indices(task.make_batch(2 * epoch + b))) seen.insert(i);
    }
    EXPECT_EQ(seen, (std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})) << "epoch " << epoch;
  }
}

TEST(TaskBatches, LabelsFollowExamples) {
  ClassificationTask task(classification_config(4), tiny_dataset(false), 0);
  Batch batch = task.make_batch(1);
  std::vector<int64_t> indices = batch_indices(batch);
  for (size_t b = 0; b < indices.size(); ++b) {
    EXPECT_EQ(batch.labels[b].item<int64_t>(), indices[b] % 3);
  }
}

TEST(TaskBatches, DeterministicForSeedAndIndex) {
  ClassificationTask a(classification_config(4), tiny_dataset(true), 11);
  ClassificationTask b(classification_config(4), tiny_dataset(true), 11);
  ClassificationTask other(classification_config(4), tiny_dataset(true), 12);
  // Asked for in a different order, the batches are still the same.
  Batch a7 = a.make_batch(7), a2 = a.make_batch(2);
  Batch b2 = b.make_batch(2), b7 = b.make_batch(7);
  EXPECT_TRUE(torch::equal(a7.inputs[kImage], b7.inputs[kImage]));
  EXPECT_TRUE(torch::equal(a2.inputs[kImage], b2.inputs[kImage]));
  bool any_differs = false;
  for (int i = 0; i < 5; ++i) {
    any_differs |= batch_indices(a.make_batch(i)) != batch_indices(other.make_batch(i));
  }
  EXPECT_TRUE(any_differs);
}

TEST(TaskBatches, ImagesScaledToUnitRange) {
  ClassificationTask task(classification_config(10), tiny_dataset(false), 0);
  torch::Tensor images = task.make_batch(0).inputs[kImage];
  ASSERT_EQ(images.sizes(), torch::IntArrayRef({10, 1, 1, 4, 4}));
  EXPECT_EQ(images.min().item<float>(), -1.0f);                          // pixel 0
  EXPECT_NEAR(images.max().item<float>(), 90.0f * 2.0f / 255.0f - 1.0f, 1e-6);  // pixel 90
}

TEST(BatchPrefetcher, SameBatchesAsDirectCalls) {
  ClassificationTask first(classification_config(3), tiny_dataset(true), 5);
  TaskConfig second_config = classification_config(2);
  second_config.name = "second";
  ClassificationTask second(second_config, tiny_dataset(true), 5);
  for (int workers : {1, 3}) {
    BatchPrefetcher prefetcher({&first, &second}, workers, 2);
    double waited = 0.0;
    // Interleaved requests, as an AGD schedule makes them.
    const std::vector<size_t> order = {0, 1, 1, 0, 0, 0, 1, 0};
    std::vector<int64_t> served(2, 0);
    for (size_t task : order) {
      Batch batch = prefetcher.next(task, &waited);
      const ClassificationTask& source = task == 0 ? first : second;
      Batch expected = source.make_batch(served[task]++);
      EXPECT_TRUE(torch::equal(batch.inputs[kImage], expected.inputs[kImage]))
          << "workers " << workers << ", task " << task;
    }
    EXPECT_GE(waited, 0.0);
  }
}

TEST(MakeTask, RejectsModalitiesTheDataLacks) {
  Tokenizer no_tokenizer;  // classification never tokenizes
  TaskConfig audio = classification_config(4);
  audio.modalities = {"audio"};
  EXPECT_THROW(make_task(audio, tiny_dataset(false), 0, no_tokenizer, 8, {"{}"}), ConfigError);
  TaskConfig video_text = classification_config(4);
  video_text.objective = "nce";
  video_text.modalities = {"video", "text"};
  EXPECT_THROW(make_task(video_text, tiny_dataset(false), 0, no_tokenizer, 8, {"{}"}),
               ConfigError);
  EXPECT_NE(make_task(classification_config(4), tiny_dataset(false), 0, no_tokenizer, 8, {"{}"}),
            nullptr);
}

// Moving items made from the tiny dataset's images, upscaled to 28x28.
std::shared_ptr<const Dataset> tiny_videos() {
  torch::Tensor images = torch::zeros({10, 28, 28}, torch::kByte);
  images.narrow(1, 10, 8).narrow(2, 10, 8).fill_(200);
  auto items = std::make_shared<const ImageTextDataset>(
      "items", images, torch::arange(10, torch::kLong) % 3, std::vector<std::string>{"a", "b", "c"});
  DatasetConfig config;
  config.motions = {"left", "right", "up"};
  return std::make_shared<const MovingFashionMnist>("videos", items, config, 4, nullptr);
}

TEST(VideoTasks, ClassifyTheNamedLabelSet) {
  auto videos = tiny_videos();
  TaskConfig motion = classification_config(4);
  motion.dataset = "videos";
  motion.modalities = {"video"};
  motion.label = "motion";
  ClassificationTask task(motion, videos, 0);
  EXPECT_EQ(task.label_set(), 1);
  Batch batch = task.make_batch(0);
  ASSERT_EQ(batch.inputs.at("video").sizes(), torch::IntArrayRef({4, 1, 8, 35, 35}));
  // Each label is the motion of some video of the set, and batches of one
  // epoch cover every video once.
  std::multiset<int64_t> motions, expected;
  for (int64_t b = 0; b < 3; ++b) {
    torch::Tensor labels = task.make_batch(b).labels;
    for (int64_t i = 0; i < labels.size(0) && b * 4 + i < 10; ++i) motions.insert(labels[i].item<int64_t>());
  }
  for (int64_t i = 0; i < 10; ++i) expected.insert(videos->label(i, 1));
  EXPECT_EQ(motions, expected);
}

TEST(VideoTasks, MissingModalityOrLabelSetIsAConfigError) {
  Tokenizer no_tokenizer;
  TaskConfig audio = classification_config(4);
  audio.name = "video_audio";
  audio.objective = "nce";
  audio.modalities = {"video", "audio"};
  try {
    make_task(audio, tiny_videos(), 0, no_tokenizer, 8, {"{}"});
    FAIL() << "a dataset built without speech has no audio";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("has no audio; it offers video"), std::string::npos)
        << e.what();
  }
  TaskConfig colour = classification_config(4);
  colour.modalities = {"video"};
  colour.label = "colour";
  try {
    make_task(colour, tiny_videos(), 0, no_tokenizer, 8, {"{}"});
    FAIL() << "the videos have no colour labels";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("label set 'colour'; its label sets are item, motion"),
              std::string::npos)
        << e.what();
  }
  TaskConfig text_first = classification_config(4);
  text_first.objective = "nce";
  text_first.modalities = {"text", "video"};
  EXPECT_THROW(make_task(text_first, tiny_videos(), 0, no_tokenizer, 8, {"{}"}), ConfigError);
}

TEST(CheckVisionFits, NamesTheVisionKeys) {
  VisionConfig vision;
  vision.channels = 1;
  vision.patch = {1, 2, 2};
  EXPECT_NO_THROW(check_vision_fits(vision, *tiny_dataset(false)));  // 4x4 images
  vision.patch = {1, 3, 3};
  try {
    check_vision_fits(vision, *tiny_dataset(false));
    FAIL() << "a 3x3 patch on 4x4 images must be rejected";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.vision.patch"), std::string::npos) << e.what();
  }
  vision.patch = {1, 2, 2};
  vision.channels = 3;
  EXPECT_THROW(check_vision_fits(vision, *tiny_dataset(false)), ConfigError);
}

}  // namespace
}  // namespace imp
