#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/train/trainer.h"

namespace imp {
namespace {

TEST(TaskSignature, NamesShapesObjectiveAndHead) {
  TaskConfig task;
  task.dataset = "fmnist_video";
  task.label = "motion";
  task.objective = "softmax_ce";
  Batch batch;
  batch.inputs["video"] = torch::zeros({32, 1, 8, 35, 35});
  EXPECT_EQ(task_signature(task, batch), "video[32,1,8,35,35] softmax_ce head=fmnist_video:motion");

  task.drop_tokens = 0.75;
  task.rematerialize = true;
  EXPECT_EQ(task_signature(task, batch),
            "video[32,1,8,35,35] softmax_ce head=fmnist_video:motion droptoken=0.75 remat");
}

TEST(TaskSignature, ContrastiveTasksShareOneForEqualShapes) {
  TaskConfig captions;
  captions.objective = "nce";
  captions.dataset = "fmnist";
  TaskConfig labels = captions;
  labels.text = "label";
  Batch batch;
  batch.inputs["image"] = torch::zeros({128, 1, 1, 28, 28});
  batch.inputs["text"] = torch::zeros({128, 16}, torch::kLong);
  EXPECT_EQ(task_signature(captions, batch), "image[128,1,1,28,28] text[128,16] nce");
  EXPECT_EQ(task_signature(labels, batch), task_signature(captions, batch));
  // Longer captions are another signature.
  batch.inputs["text"] = torch::zeros({128, 24}, torch::kLong);
  EXPECT_NE(task_signature(labels, batch), "image[128,1,1,28,28] text[128,16] nce");
}

}  // namespace
}  // namespace imp
