#include "imp/data/moving_fashion_mnist.h"

#include <cmath>
#include <set>

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"

namespace imp {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Caption wordings; {item} and {motion} are filled, then articles fixed.
const std::vector<std::string> kCaptionTemplates = {
    "a {item} {motion}",
    "a video of a {item} {motion}",
    "a {item} that is {motion}",
    "{item} {motion}",
};

// Zero-shot prompts for the motion label set.
const std::vector<std::string> kMotionPrompts = {
    "something {}",
    "an item {}",
    "a video of something {}",
    "a video of an item {}",
};

// Salts that split one example draw into independent choices.
constexpr uint64_t kWordingSalt = 1;
constexpr uint64_t kClipSalt = 2;
constexpr uint64_t kRenditionSalt = 3;

double lerp(double a, double b, double t) { return a + (b - a) * t; }

// Uniform in [lo, hi) from `bits` and a salt.
double uniform(uint64_t bits, uint64_t salt, double lo, double hi) {
  return lerp(lo, hi, unit_double(mix64(bits, salt)));
}

}  // namespace

Motion parse_motion(const std::string& name) {
  static const std::vector<std::pair<std::string, Motion>> kNames = {
      {"left", Motion::kLeft},         {"right", Motion::kRight},
      {"up", Motion::kUp},             {"down", Motion::kDown},
      {"clockwise", Motion::kClockwise}, {"counterclockwise", Motion::kCounterclockwise},
      {"zoom_in", Motion::kZoomIn},    {"zoom_out", Motion::kZoomOut}};
  for (const auto& [key, motion] : kNames) {
    if (key == name) return motion;
  }
  throw ConfigError(str_cat("unknown motion '", name, "'; expected left, right, up, down, "
                            "clockwise, counterclockwise, zoom_in or zoom_out"));
}

std::string motion_phrase(Motion motion) {
  switch (motion) {
    case Motion::kLeft: return "moving to the left";
    case Motion::kRight: return "moving to the right";
    case Motion::kUp: return "moving up";
    case Motion::kDown: return "moving down";
    case Motion::kClockwise: return "turning clockwise";
    case Motion::kCounterclockwise: return "turning counterclockwise";
    case Motion::kZoomIn: return "zooming in";
    case Motion::kZoomOut: return "zooming out";
  }
  return "";
}

ItemPath make_item_path(Motion motion, int canvas, uint64_t bits) {
  ItemPath path;
  const double c = canvas;
  switch (motion) {
    case Motion::kLeft:
    case Motion::kRight:
    case Motion::kUp:
    case Motion::kDown: {
      // The full-size item (as in the images) travels 85-100% of the free
      // room along one axis.
      const double scale = 1.0, half = 14.0 * scale;
      const double room = c - 2 * half;
      const double travel = room * uniform(bits, 1, 0.85, 1.0);
      const double start = half + uniform(bits, 2, 0.0, room - travel);
      const double across = half + uniform(bits, 3, 0.0, room);
      const bool backwards = motion == Motion::kLeft || motion == Motion::kUp;
      const double from = backwards ? start + travel : start;
      const double to = backwards ? start : start + travel;
      const bool horizontal = motion == Motion::kLeft || motion == Motion::kRight;
      path.x0 = horizontal ? from : across;
      path.x1 = horizontal ? to : across;
      path.y0 = horizontal ? across : from;
      path.y1 = horizontal ? across : to;
      path.scale0 = path.scale1 = scale;
      break;
    }
    case Motion::kClockwise:
    case Motion::kCounterclockwise: {
      // The rotated item's box needs half its diagonal on every side. The
      // item stays within about 60 degrees of upright, so that it reads as
      // the same item throughout.
      const double scale = 0.85, reach = 14.0 * scale * std::sqrt(2.0);
      path.x0 = path.x1 = reach + uniform(bits, 1, 0.0, std::max(0.0, c - 2 * reach));
      path.y0 = path.y1 = reach + uniform(bits, 2, 0.0, std::max(0.0, c - 2 * reach));
      path.scale0 = path.scale1 = scale;
      const double turn = uniform(bits, 4, 90.0, 120.0);
      path.angle0 = uniform(bits, 3, -10.0, 10.0) + (motion == Motion::kClockwise ? -turn : turn) / 2;
      path.angle1 = path.angle0 + (motion == Motion::kClockwise ? turn : -turn);
      break;
    }
    case Motion::kZoomIn:
    case Motion::kZoomOut: {
      // From half size to full size (or back); the full-size item must fit.
      const double small = uniform(bits, 3, 0.45, 0.55), large = uniform(bits, 4, 0.95, 1.0);
      const double half = 14.0 * large;
      path.x0 = path.x1 = half + uniform(bits, 1, 0.0, c - 2 * half);
      path.y0 = path.y1 = half + uniform(bits, 2, 0.0, c - 2 * half);
      path.scale0 = motion == Motion::kZoomIn ? small : large;
      path.scale1 = motion == Motion::kZoomIn ? large : small;
      break;
    }
  }
  return path;
}

void render_frame(const uint8_t* image, int side, const ItemPath& path, double progress,
                  int canvas, float* out) {
  const double cx = lerp(path.x0, path.x1, progress), cy = lerp(path.y0, path.y1, progress);
  const double scale = lerp(path.scale0, path.scale1, progress);
  const double angle = lerp(path.angle0, path.angle1, progress) * kPi / 180.0;
  const double cos_a = std::cos(angle) / scale, sin_a = std::sin(angle) / scale;
  const double centre = side / 2.0;
  for (int y = 0; y < canvas; ++y) {
    for (int x = 0; x < canvas; ++x) {
      // Canvas pixel centre -> source coordinates: undo the clockwise
      // rotation and the scaling about the item's centre.
      const double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      const double u = dx * cos_a + dy * sin_a + centre - 0.5;
      const double v = -dx * sin_a + dy * cos_a + centre - 0.5;
      const int u0 = static_cast<int>(std::floor(u)), v0 = static_cast<int>(std::floor(v));
      const double fu = u - u0, fv = v - v0;
      double value = 0.0;
      for (int j = 0; j < 2; ++j) {
        for (int i = 0; i < 2; ++i) {
          const int su = u0 + i, sv = v0 + j;
          if (su < 0 || sv < 0 || su >= side || sv >= side) continue;
          const double weight = (i ? fu : 1.0 - fu) * (j ? fv : 1.0 - fv);
          value += weight * image[sv * side + su];
        }
      }
      *out++ = static_cast<float>(value * (2.0 / 255.0) - 1.0);
    }
  }
}

MovingFashionMnist::MovingFashionMnist(std::string name,
                                       std::shared_ptr<const ImageTextDataset> items,
                                       const DatasetConfig& config, uint64_t seed,
                                       std::shared_ptr<const SpeechBank> speech)
    : Dataset(std::move(name)),
      items_(std::move(items)),
      speech_(std::move(speech)),
      frames_(config.frames),
      video_frames_(config.video_frames),
      canvas_(config.canvas),
      eval_clips_(config.eval_clips),
      seed_(seed) {
  IMP_REQUIRE(ConfigError, frames_ > 0 && frames_ <= video_frames_, "dataset '", Dataset::name(),
              "': frames (", frames_, ") must be in [1, video_frames = ", video_frames_, "]");
  IMP_REQUIRE(ConfigError, items_->image_height() == 28 && items_->image_width() == 28,
              "dataset '", Dataset::name(), "' expects 28x28 Fashion-MNIST images, got ",
              items_->image_height(), "x", items_->image_width());
  IMP_REQUIRE(ConfigError, !config.motions.empty(), "dataset '", Dataset::name(),
              "' needs at least one motion");
  std::vector<std::string> phrases;
  motion_names_ = config.motions;
  for (const std::string& motion : config.motions) {
    motions_.push_back(parse_motion(motion));
    phrases.push_back(motion_phrase(motions_.back()));
  }
  label_sets_ = {LabelSet{"item", items_->class_names(), {}},
                 LabelSet{"motion", phrases, kMotionPrompts}};
  if (speech_) {
    IMP_REQUIRE(ConfigError,
                speech_->num_texts() ==
                    static_cast<int64_t>(items_->class_names().size() * motions_.size() *
                                         kCaptionTemplates.size()),
                "dataset '", Dataset::name(), "': the speech bank does not hold its captions");
  }
}

int64_t MovingFashionMnist::label(int64_t index, int set) const {
  if (set == 0) return items_->label(index);
  return static_cast<int64_t>(below(mix64(seed_, static_cast<uint64_t>(index)), motions_.size()));
}

std::vector<std::string> MovingFashionMnist::modalities() const {
  if (speech_) return {"video", "audio"};
  return {"video"};
}

ItemPath MovingFashionMnist::path(int64_t index) const {
  return make_item_path(motion(index), canvas_,
                        mix64(seed_ ^ 0x9a7b3c4dULL, static_cast<uint64_t>(index)));
}

void MovingFashionMnist::render(int64_t index, int first, int count, float* out) const {
  const ItemPath item_path = path(index);
  const uint8_t* image = items_->raw_images().data_ptr<uint8_t>() + index * 28 * 28;
  const int64_t frame_size = static_cast<int64_t>(canvas_) * canvas_;
  for (int f = 0; f < count; ++f) {
    const double progress =
        video_frames_ > 1 ? static_cast<double>(first + f) / (video_frames_ - 1) : 0.0;
    render_frame(image, 28, item_path, progress, canvas_, out + f * frame_size);
  }
}

at::Tensor MovingFashionMnist::video(int64_t index) const {
  at::Tensor out = at::empty({1, video_frames_, canvas_, canvas_}, at::kFloat);
  render(index, 0, video_frames_, out.data_ptr<float>());
  return out;
}

at::Tensor MovingFashionMnist::clips(const std::vector<int64_t>& indices,
                                     const std::vector<int>& starts) const {
  const int64_t B = static_cast<int64_t>(indices.size());
  at::Tensor out = at::empty({B, 1, frames_, canvas_, canvas_}, at::kFloat);
  const int64_t clip_size = static_cast<int64_t>(frames_) * canvas_ * canvas_;
  for (int64_t b = 0; b < B; ++b) {
    render(indices[b], starts[b], frames_, out.data_ptr<float>() + b * clip_size);
  }
  return out;
}

int64_t MovingFashionMnist::text_id(int64_t index, uint64_t draw) const {
  const auto wordings = static_cast<uint64_t>(kCaptionTemplates.size());
  return caption_group(index) * static_cast<int64_t>(wordings) +
         static_cast<int64_t>(below(mix64(draw, kWordingSalt), wordings));
}

at::Tensor MovingFashionMnist::input(const std::string& modality,
                                     const std::vector<int64_t>& indices,
                                     const std::vector<uint64_t>& draws) const {
  if (modality == "video") {
    std::vector<int> starts(indices.size());
    const uint64_t positions = video_frames_ - frames_ + 1;
    for (size_t b = 0; b < indices.size(); ++b) {
      starts[b] = static_cast<int>(below(mix64(draws[b], kClipSalt), positions));
    }
    return clips(indices, starts);
  }
  IMP_REQUIRE(ConfigError, modality == "audio" && speech_, "dataset '", name(), "' has no ",
              modality, "; it offers video, audio and text");
  std::vector<int64_t> texts(indices.size());
  std::vector<int> renditions(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) {
    texts[b] = text_id(indices[b], draws[b]);
    renditions[b] =
        static_cast<int>(below(mix64(draws[b], kRenditionSalt), speech_->renditions()));
  }
  return speech_->gather(texts, renditions);
}

int MovingFashionMnist::eval_views(const std::string& modality) const {
  return modality == "video" ? eval_clips_ : 1;
}

at::Tensor MovingFashionMnist::eval_input(const std::string& modality,
                                          const std::vector<int64_t>& indices, int view) const {
  if (modality == "video") {
    // Clip starts spread evenly from the first frame to the last possible.
    const int last = video_frames_ - frames_;
    const int start = eval_clips_ > 1
                          ? static_cast<int>(std::lround(static_cast<double>(view) * last /
                                                         (eval_clips_ - 1)))
                          : last / 2;
    return clips(indices, std::vector<int>(indices.size(), start));
  }
  std::vector<uint64_t> draws(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) draws[b] = eval_draw(indices[b]);
  return input(modality, indices, draws);
}

std::string MovingFashionMnist::caption(int64_t index, uint64_t draw) const {
  const int64_t id = text_id(index, draw);
  const auto wordings = static_cast<int64_t>(kCaptionTemplates.size());
  std::string text = kCaptionTemplates[id % wordings];
  replace_all(text, "{item}", items_->class_names()[label(index, 0)]);
  replace_all(text, "{motion}", motion_phrase(motion(index)));
  return fix_articles(text);
}

int64_t MovingFashionMnist::caption_group(int64_t index) const {
  return label(index, 0) * static_cast<int64_t>(motions_.size()) + label(index, 1);
}

std::vector<std::string> MovingFashionMnist::caption_texts(
    const std::vector<std::string>& class_names, const std::vector<std::string>& motions) {
  std::vector<std::string> texts;
  for (const std::string& item : class_names) {
    for (const std::string& motion : motions) {
      for (const std::string& templ : kCaptionTemplates) {
        std::string text = templ;
        replace_all(text, "{item}", item);
        replace_all(text, "{motion}", motion_phrase(parse_motion(motion)));
        texts.push_back(fix_articles(text));
      }
    }
  }
  return texts;
}

std::vector<std::string> MovingFashionMnist::text_corpus() const {
  std::vector<std::string> corpus;
  std::set<std::string> seen;
  auto add = [&](const std::string& text) {
    if (seen.insert(text).second) corpus.push_back(text);
  };
  for (const std::string& text : caption_texts(items_->class_names(), motion_names_)) add(text);
  for (const std::string& prompt : default_prompts()) {
    for (const std::string& item : items_->class_names()) add(fill_prompt(prompt, item));
  }
  for (const std::string& prompt : kMotionPrompts) {
    for (const std::string& phrase : label_sets_[1].class_names) add(fill_prompt(prompt, phrase));
  }
  return corpus;
}

void MovingFashionMnist::check_model_fits(const ModelConfig& model) const {
  const VisionConfig& vision = model.vision;
  IMP_REQUIRE(ConfigError, vision.channels == 1, "dataset '", name(),
              "' has grey videos (1 channel) but model.vision.channels is ", vision.channels,
              "; set model.vision.channels=1");
  IMP_REQUIRE(ConfigError, canvas_ % vision.patch[1] == 0 && canvas_ % vision.patch[2] == 0,
              "dataset '", name(), "' has ", canvas_, "x", canvas_,
              " frames, which model.vision.patch ", vision.patch[1], "x", vision.patch[2],
              " does not divide; change the dataset's canvas or the patch");
  IMP_REQUIRE(ConfigError, frames_ < vision.patch[0] || frames_ % vision.patch[0] == 0,
              "dataset '", name(), "' has clips of ", frames_,
              " frames, which model.vision.patch[0] = ", vision.patch[0],
              " does not divide; change the dataset's frames or the patch");
}

}  // namespace imp
