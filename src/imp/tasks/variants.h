// Multi-resolution variants of a vision task: copies of it that trade batch
// size, resolution and DropToken against each other at a fixed number of
// tokens per batch, T = batch x frame tokens x height tokens x width tokens.
// Each variant is its own task in the AGD mixture.
//
// The method's variants (`variants: method` on a task):
//   video, with TF > 1 frame tokens per clip; the budget is T / TF, the
//   tokens of an image batch of the same size:
//     half_res       each spatial side scaled by 1 / sqrt(TF) (one half for
//                    TF = 4), same batch
//     small_batch    batch / TF
//     droptoken      DropToken 1 - 1 / TF (0.75 for TF = 4), same batch
//   image (TF = 1); the budget is T itself:
//     double_res     each spatial side doubled, batch / 4
//     droptoken      DropToken 0.75, batch x 4
// A variant whose rounded sizes miss the budget by more than 5% (a grid too
// small to halve, a batch below one) is left out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "imp/config/config.h"

namespace imp {

// Height or width in pixels of an input of `pixels` scaled by `scale`, made
// a whole number of `patch`-pixel patches (at least one).
int64_t scaled_side(int64_t pixels, double scale, int64_t patch);

// Tokens per example of a clip of `frames` x `height` x `width` pixels, after
// DropToken at `drop_tokens`. Clips shorter than a temporal patch count as one.
int64_t vision_tokens(const VisionConfig& vision, int64_t frames, int64_t height, int64_t width,
                      double drop_tokens = 0.0);

struct TaskVariant {
  TaskConfig config;     // named "<task>/<variant>"
  int64_t tokens = 0;    // per batch
  int64_t budget = 0;    // tokens per batch the variant aims at
};

// The method's variants of `task`, whose first modality is image or video
// with inputs of frames x height x width pixels. Variants that miss their
// budget by more than 5% are left out and described in *skipped.
std::vector<TaskVariant> method_variants(const TaskConfig& task, const VisionConfig& vision,
                                         int64_t frames, int64_t height, int64_t width,
                                         std::vector<std::string>* skipped = nullptr);

}  // namespace imp
