#include "imp/tasks/variants.h"

#include <algorithm>
#include <cmath>

#include "imp/core/error.h"

namespace imp {

int64_t scaled_side(int64_t pixels, double scale, int64_t patch) {
  const double patches = static_cast<double>(pixels) * scale / static_cast<double>(patch);
  return std::max<int64_t>(1, std::llround(patches)) * patch;
}

int64_t vision_tokens(const VisionConfig& vision, int64_t frames, int64_t height, int64_t width,
                      double drop_tokens) {
  const int64_t per_example = (std::max<int64_t>(frames, vision.patch[0]) / vision.patch[0]) *
                              (height / vision.patch[1]) * (width / vision.patch[2]);
  const auto dropped = static_cast<int64_t>(std::llround(static_cast<double>(per_example) * drop_tokens));
  return std::max<int64_t>(1, per_example - dropped);
}

std::vector<TaskVariant> method_variants(const TaskConfig& task, const VisionConfig& vision,
                                         int64_t frames, int64_t height, int64_t width,
                                         std::vector<std::string>* skipped) {
  const int64_t frame_tokens = std::max<int64_t>(frames, vision.patch[0]) / vision.patch[0];
  const int64_t base = static_cast<int64_t>(task.batch_size) * vision_tokens(vision, frames, height, width);

  struct Plan {
    const char* name;
    double scale;        // of each spatial side
    double drop_tokens;
    double batch_scale;  // of the task's batch
  };
  const double tf = static_cast<double>(frame_tokens);
  const int64_t budget = static_cast<int64_t>(std::llround(static_cast<double>(base) / tf));
  const std::vector<Plan> plans =
      frame_tokens > 1 ? std::vector<Plan>{{"half_res", 1.0 / std::sqrt(tf), 0.0, 1.0},
                                           {"small_batch", 1.0, 0.0, 1.0 / tf},
                                           {"droptoken", 1.0, 1.0 - 1.0 / tf, 1.0}}
                       : std::vector<Plan>{{"double_res", 2.0, 0.0, 0.25}, {"droptoken", 1.0, 0.75, 4.0}};

  std::vector<TaskVariant> out;
  for (const Plan& plan : plans) {
    TaskVariant variant;
    variant.config = task;
    variant.config.name = task.name + "/" + plan.name;
    variant.config.variants = "none";
    variant.config.resolution_scale = task.resolution_scale * plan.scale;
    variant.config.drop_tokens = plan.drop_tokens;
    variant.config.batch_size =
        static_cast<int>(std::llround(static_cast<double>(task.batch_size) * plan.batch_scale));
    const int64_t h = scaled_side(height, plan.scale, vision.patch[1]);
    const int64_t w = scaled_side(width, plan.scale, vision.patch[2]);
    variant.tokens = static_cast<int64_t>(variant.config.batch_size) *
                     vision_tokens(vision, frames, h, w, plan.drop_tokens);
    variant.budget = budget;
    const double miss = std::abs(static_cast<double>(variant.tokens - budget)) / static_cast<double>(budget);
    if (variant.config.batch_size < 1 || miss > 0.05) {
      if (skipped != nullptr) {
        skipped->push_back(str_cat("task '", task.name, "': variant ", plan.name, " left out: batch ",
                                   variant.config.batch_size, " of ", h, "x", w, " inputs gives ",
                                   variant.tokens, " tokens for a budget of ", budget));
      }
      continue;
    }
    out.push_back(std::move(variant));
  }
  return out;
}

}  // namespace imp
