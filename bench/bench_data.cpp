// Data pipeline throughput: how fast one worker decodes and augments user
// data, and how much of a training run waits for it.
//
//   build/bench/bench_data [--seconds S] [--steps N]
//
// Makes its inputs in a scratch folder with ImageMagick and FFmpeg, then
// prints, each with what ran:
//   1. images/s per worker: a 256x256 JPEG decoded, random-resized-cropped
//      and flipped to 224x224 floats;
//   2. clips/s per worker: 16 frames at 224x224 from a 1280x720 mp4;
//   3. the share of training time spent waiting for data when the tiny
//      model trains for N steps on WebDataset shards of 224x224 JPEGs
//      (image classification and image-text contrast).
// The default config's data wait is what bench_train prints.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "source_commit.h"
#include "imp/config/config.h"
#include "imp/core/random.h"
#include "imp/core/threads.h"
#include "imp/core/version.h"
#include "imp/io/image_decoder.h"
#include "imp/io/tar_shard.h"
#include "imp/io/video_decoder.h"
#include "imp/train/trainer.h"


namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void run(const std::string& command) {
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) {
    throw std::runtime_error("command failed: " + command);
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

const uint8_t* bytes(const std::string& data) { return reinterpret_cast<const uint8_t*>(data.data()); }

// Runs `body` until `budget` seconds have passed (at least 3 times) and
// returns calls per second.
template <typename Body>
double rate(double budget, Body body) {
  body();  // warm-up: first-call allocations and library setup
  int64_t calls = 0;
  const auto start = Clock::now();
  do {
    body();
    ++calls;
  } while (calls < 3 || seconds_since(start) < budget);
  return calls / seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  double budget = 5.0;
  int steps = 60;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--seconds") budget = std::atof(argv[i + 1]);
    if (arg == "--steps") steps = std::atoi(argv[i + 1]);
  }
  try {
    imp::reexec_with_thread_environment("bf16", argv);
    const fs::path dir = fs::temp_directory_path() / ("imp-bench-data-" + std::to_string(getpid()));
    fs::create_directories(dir);

    std::printf("bench_data: %s, libtorch %s, commit %s\n", imp::thread_settings().c_str(),
                imp::torch_version().c_str(), source_commit().c_str());

    // 1. Images: decode + random resized crop + flip to 224x224.
    const std::string jpeg_path = (dir / "photo.jpg").string();
    run("convert -size 256x256 -seed 1 plasma:fuchsia-blue -quality 90 " + jpeg_path);
    const std::string jpeg = slurp(jpeg_path);
    std::vector<float> out(3 * 224 * 224);
    uint64_t draw = 0;
    const double images_per_s = rate(budget, [&] {
      const imp::DecodedImage image = imp::decode_image(bytes(jpeg), jpeg.size(), {}, jpeg_path);
      const uint64_t d = imp::mix64(++draw);
      const imp::CropBox box = imp::random_resized_crop_box(image.height, image.width, 0.35, 1.0,
                                                            3.0 / 4.0, 4.0 / 3.0, d);
      imp::crop_resize(image, box, 224, 224, (d & 1) != 0, out.data());
    });
    std::printf("bench_data: image: 256x256 JPEG (%zu bytes) -> random resized crop, flip, 224x224 "
                "float: %.1f images/s per worker\n", jpeg.size(), images_per_s);

    // 2. Video: 16 frames at 224 from a 1280x720 mp4 (MPEG-4 part 2, 30 fps, 4 s).
    const std::string video_path = (dir / "clip.mp4").string();
    run("ffmpeg -v error -f lavfi -i testsrc2=s=1280x720:r=30:d=4 -c:v mpeg4 -q:v 4 -y " + video_path);
    const std::string video = slurp(video_path);
    std::vector<float> frames(16 * 3 * 224 * 224);
    const double clips_per_s = rate(budget, [&] {
      imp::VideoDecodeOptions options;
      options.frames = 16;
      options.fps = 8.0;
      options.short_side = 224;
      options.start_fraction = imp::unit_double(imp::mix64(++draw));
      const imp::DecodedVideo clip = imp::decode_video(bytes(video), video.size(), options, video_path);
      const imp::CropBox box = imp::random_resized_crop_box(clip.height, clip.width, 0.35, 1.0,
                                                            3.0 / 4.0, 4.0 / 3.0, draw);
      imp::DecodedImage frame{clip.height, clip.width, 3, {}};
      const size_t frame_bytes = static_cast<size_t>(clip.height) * clip.width * 3;
      for (int t = 0; t < clip.frames; ++t) {
        frame.pixels.assign(clip.pixels.begin() + t * frame_bytes, clip.pixels.begin() + (t + 1) * frame_bytes);
        imp::crop_resize(frame, box, 224, 224, false, frames.data() + t * 3 * 224 * 224);
      }
    });
    std::printf("bench_data: video: 1280x720 mp4 (mpeg4, %zu bytes), 16 frames at 8 fps -> 224x224: "
                "%.2f clips/s per worker\n", video.size(), clips_per_s);

    // 3. Training on shards: 4 shards of 128 JPEGs, 256x256, 4 classes.
    const std::vector<std::string> colours{"red-yellow", "blue-green", "grey-white", "purple-orange"};
    for (int s = 0; s < 4; ++s) {
      imp::ShardWriter writer((dir / ("train-00000" + std::to_string(s) + ".tar")).string());
      for (int k = 0; k < 128; ++k) {
        const int cls = (s * 128 + k) % 4;
        if (k < 8) {
          run("convert -size 256x256 -seed " + std::to_string(s * 128 + k) + " plasma:" + colours[cls] +
              " -quality 90 " + (dir / ("p" + std::to_string(k) + ".jpg")).string());
        }
        char key[16];
        std::snprintf(key, sizeof key, "%06d", s * 128 + k);
        // Eight distinct pictures per shard, repeated: decoding cost is what counts.
        writer.add(std::string(key) + ".jpg", slurp((dir / ("p" + std::to_string(k % 8) + ".jpg")).string()));
        writer.add(std::string(key) + ".txt", "a plasma picture in " + colours[cls]);
        writer.add(std::string(key) + ".cls", colours[cls]);
      }
      writer.close();
    }
    const std::string yaml = R"(
workdir: )" + (dir / "run").string() + R"(
cache_dir: )" + (dir / "cache").string() + R"(
model: {preset: tiny, vision: {channels: 3, patch: [1, 16, 16], grid: [1, 14, 14]}}
datasets:
  - {name: plasma, type: webdataset, train: [")" + (dir / "train-{000000..000003}.tar").string() + R"("],
     test: [")" + (dir / "train-000000.tar").string() + R"("]}
tasks:
  - {name: plasma_cls, dataset: plasma, modalities: [image], objective: softmax_ce, batch_size: 32}
  - {name: plasma_text, dataset: plasma, modalities: [image, text], objective: nce, batch_size: 32}
train: {steps: )" + std::to_string(steps) + R"(, log_every: 1000000, workers: 1, prefetch: 2, dtype: bf16}
)";
    imp::Config config = imp::parse_config(yaml, "bench_data");
    imp::Trainer trainer(config);
    const imp::TrainSummary summary = trainer.train();
    std::printf("bench_data: training on shards: tiny model, 224x224 JPEG, patch 16, batch 32, "
                "2 tasks, %d worker, %d steps\n", config.train.workers, steps);
    std::printf("bench_data: %.2f s, %.3f steps/s, data wait %.1f%% of training time\n",
                summary.train_seconds, summary.steps / summary.train_seconds,
                100.0 * summary.data_wait_seconds / summary.train_seconds);
    fs::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_data: %s\n", e.what());
    return 1;
  }
  return 0;
}
