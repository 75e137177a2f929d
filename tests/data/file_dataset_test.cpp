// The user-data datasets (webdataset shards and manifests) on real files made
// during the test with ImageMagick and FFmpeg: indexing, labels, decoding,
// skipped samples, shard order, rank splits, and the `imp data` tools.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <ATen/ATen.h>

#include "imp/core/error.h"
#include "imp/core/utf8.h"
#include "imp/data/data_tools.h"
#include "imp/data/file_dataset.h"
#include "imp/data/manifest.h"
#include "imp/io/decode_error.h"
#include "imp/io/tar_shard.h"
#include "imp/tasks/task.h"
#include "imp/train/prefetcher.h"
#include "../scratch_dir.h"

namespace imp {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

void run(const std::string& command) {
  ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A solid-colour PNG of w x h pixels, as bytes.
std::string png(const ScratchDir& dir, int w, int h, const std::string& colour) {
  const std::string path = dir.file("solid.png");
  run("convert -size " + std::to_string(w) + "x" + std::to_string(h) + " xc:'" + colour + "' " + path);
  return slurp(path);
}

ModelConfig small_model() {
  ModelConfig model;
  model.vision.channels = 3;
  model.vision.patch = {2, 8, 8};
  model.vision.grid = {2, 2, 2};  // 16x16 images, 4-frame clips
  model.audio.sample_rate = 16000;
  model.audio.window = 400;
  model.audio.hop = 160;
  model.audio.mel_bands = 32;
  model.audio.frames = 32;
  model.audio.patch = {16, 16};
  model.audio.grid = {2, 2};
  return model;
}

DatasetConfig shard_config(const std::string& pattern, const ScratchDir& dir) {
  DatasetConfig config;
  config.name = "user";
  config.type = "webdataset";
  config.train = {pattern};
  config.test = {pattern};
  return config;
}

FileDataset::Options options_for(bool train, const ScratchDir& dir, int rank = 0, int world = 1) {
  FileDataset::Options options;
  options.train = train;
  options.rank = rank;
  options.world_size = world;
  options.cache_dir = dir.file("cache");
  return options;
}

// Shards <dir>/s-00000k.tar with `per_shard` samples each: sample i is a
// PNG whose red channel is 10 * i, a caption "item i" and a class name.
std::string write_image_shards(const ScratchDir& dir, int shards, int per_shard) {
  const std::vector<std::string> classes{"cat", "dog", "eel"};
  int i = 0;
  for (int s = 0; s < shards; ++s) {
    ShardWriter writer(dir.file("s-00000" + std::to_string(s) + ".tar"));
    for (int k = 0; k < per_shard; ++k, ++i) {
      char key[16];
      std::snprintf(key, sizeof key, "%06d", i);
      writer.add(std::string(key) + ".png", png(dir, 20, 16, "rgb(" + std::to_string(10 * i) + ",0,0)"));
      writer.add(std::string(key) + ".txt", "item " + std::to_string(i));
      writer.add(std::string(key) + ".cls", classes[i % 3]);
    }
    writer.close();
  }
  return dir.file("s-{000000.." + std::string("00000") + std::to_string(shards - 1) + "}.tar");
}

// A task whose batches are all that is tested: make_batch comes from Task.
struct PlainTask : Task {
  using Task::Task;
  TaskOutput compute_loss(ImpModel&, const Batch&) const override { return {}; }
};

// Red channel of an image input [3, 1, H, W] in 0..255.
int red_of(const at::Tensor& image) {
  return static_cast<int>(std::lround((image[0].mean().item<float>() + 1.0f) * 127.5f));
}

TEST(FileDataset, IndexesShardsWithCaptionsAndClasses) {
  ScratchDir dir("fileds");
  const std::string pattern = write_image_shards(dir, 2, 3);
  FileDataset data(shard_config(pattern, dir), small_model(), options_for(true, dir));
  ASSERT_EQ(data.size(), 6);
  EXPECT_EQ(data.shards().size(), 2u);
  EXPECT_EQ(data.modalities(), std::vector<std::string>{"image"});
  EXPECT_EQ(data.label_sets()[0].class_names, (std::vector<std::string>{"cat", "dog", "eel"}));
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(data.caption(i, 0), "item " + std::to_string(i));
    EXPECT_EQ(data.label(i), i % 3);
  }
  // The classes are remembered, so the test split agrees without the train split.
  EXPECT_EQ(fs::exists(dir.file("cache/labels")), true);
}

TEST(FileDataset, DecodesImagesToTheModelSize) {
  ScratchDir dir("fileds");
  const std::string pattern = write_image_shards(dir, 1, 3);
  DatasetConfig config = shard_config(pattern, dir);
  FileDataset data(config, small_model(), options_for(true, dir));
  at::Tensor batch = data.input("image", {0, 1, 2}, {1, 2, 3});
  ASSERT_EQ(batch.sizes(), (at::IntArrayRef{3, 3, 1, 16, 16}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(red_of(batch[i]), 10 * i, 1);
    EXPECT_NEAR(batch[i][1].mean().item<float>(), -1.0f, 1e-5);  // no green
  }
}

TEST(FileDataset, SkipsCorruptSamplesAndCountsThem) {
  ScratchDir dir("fileds");
  {
    ShardWriter writer(dir.file("bad.tar"));
    for (int i = 0; i < 8; ++i) {
      const std::string key = "k" + std::to_string(i);
      // Sample 3 contains bytes that are no image; sample 5 has no caption.
      writer.add(key + ".png", i == 3 ? std::string("not an image at all") : png(dir, 16, 16, "rgb(50,0,0)"));
      if (i != 5) writer.add(key + ".txt", "caption " + std::to_string(i));
    }
    writer.close();
  }
  DatasetConfig config = shard_config(dir.file("bad.tar"), dir);
  config.max_bad_fraction = 0.5;
  auto data = std::make_shared<FileDataset>(config, small_model(), options_for(true, dir));
  // Image-caption contrast needs each sample's caption but no label.
  TaskConfig task_config;
  task_config.name = "pairs";
  task_config.dataset = "user";
  task_config.modalities = {"image", "text"};
  task_config.objective = "nce";
  task_config.batch_size = 8;
  PlainTask task(task_config, data, 7);
  Batch batch = task.make_batch(0);
  EXPECT_EQ(batch.inputs.at("image").size(0), 8);
  SampleFailures* failures = data->failures();
  ASSERT_NE(failures, nullptr);
  const auto reasons = failures->by_reason();
  EXPECT_EQ(reasons.count("caption: missing"), 1u);
  EXPECT_GE(failures->failures(), 1);
  EXPECT_EQ(failures->tries(), 8 + failures->failures());
  // Every image in the batch decoded: none is a zero (grey) tensor.
  for (int b = 0; b < 8; ++b) EXPECT_NEAR(red_of(batch.inputs.at("image")[b]), 50, 1);
}

TEST(FileDataset, StopsWhenTooManySamplesFail) {
  ScratchDir dir("fileds");
  {
    ShardWriter writer(dir.file("broken.tar"));
    for (int i = 0; i < 40; ++i) {
      writer.add("k" + std::to_string(i) + ".jpg", i % 4 == 0 ? png(dir, 16, 16, "blue") : "garbage");
    }
    writer.close();
  }
  DatasetConfig config = shard_config(dir.file("broken.tar"), dir);
  config.max_bad_fraction = 0.1;
  auto data = std::make_shared<FileDataset>(config, small_model(), options_for(true, dir));
  TaskConfig task_config;
  task_config.name = "images";
  task_config.dataset = "user";
  task_config.modalities = {"image", "image"};  // needs neither label nor caption
  task_config.objective = "nce";
  task_config.batch_size = 4;
  PlainTask task(task_config, data, 1);
  try {
    for (int b = 0; b < 100; ++b) task.make_batch(b);
    FAIL() << "expected the failure limit to stop the batches";
  } catch (const TrainingError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("image: unknown format"), std::string::npos) << message;
    EXPECT_NE(message.find("max_bad_fraction"), std::string::npos) << message;
  }
}

TEST(FileDataset, TestSplitLeavesOutBadSamples) {
  ScratchDir dir("fileds");
  {
    ShardWriter writer(dir.file("test.tar"));
    for (int i = 0; i < 5; ++i) {
      const std::string key = "k" + std::to_string(i);
      writer.add(key + ".png", i == 2 ? std::string("\x89PNG\r\n\x1a\n truncated", 19) : png(dir, 16, 16, "white"));
      writer.add(key + ".txt", "white " + std::to_string(i));
      if (i != 4) writer.add(key + ".cls", "0");
    }
    writer.close();
  }
  DatasetConfig config = shard_config(dir.file("test.tar"), dir);
  FileDataset data(config, small_model(), options_for(false, dir));
  // Sample 2 fails to decode, sample 4 lacks the label the others have.
  ASSERT_EQ(data.size(), 3);
  EXPECT_EQ(data.example_name(2), dir.file("test.tar") + ":k3");
  EXPECT_EQ(data.load_problems().at("label: missing"), 1);
  EXPECT_EQ(data.eval_input("image", {0, 1, 2}, 0).size(0), 3);
}

TEST(FileDataset, ShardOrderIsShuffledPerEpochAndDeterministic) {
  ScratchDir dir("fileds");
  std::string pattern;
  for (int s = 0; s < 4; ++s) {
    ShardWriter writer(dir.file("o-" + std::to_string(s) + ".tar"));
    for (int k = 0; k < 5; ++k) writer.add("s" + std::to_string(s) + "_" + std::to_string(k) + ".png", "x");
    writer.close();
  }
  DatasetConfig config = shard_config(dir.file("o-{0..3}.tar"), dir);
  config.shuffle_buffer = 1;  // no mixing: whole shards in shard order
  FileDataset data(config, small_model(), options_for(true, dir));
  ASSERT_EQ(data.size(), 20);
  const std::vector<int64_t> a = data.epoch_order(11), b = data.epoch_order(11), c = data.epoch_order(12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // With a buffer of one, each shard's five samples stay together and in order.
  for (int start = 0; start < 20; start += 5) {
    for (int k = 1; k < 5; ++k) EXPECT_EQ(a[start + k], a[start] + k);
  }
  // A larger buffer mixes samples across shards but still visits each once.
  config.shuffle_buffer = 8;
  FileDataset mixed(config, small_model(), options_for(true, dir));
  std::vector<int64_t> order = mixed.epoch_order(11);
  EXPECT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), 20u);
  bool moved = false;
  for (int i = 1; i < 20; ++i) moved = moved || order[i] != order[i - 1] + 1;
  EXPECT_TRUE(moved);
}

TEST(FileDataset, RanksSplitShardsOrSamples) {
  ScratchDir dir("fileds");
  const std::string pattern = write_image_shards(dir, 3, 4);
  DatasetConfig config = shard_config(pattern, dir);
  // Three shards over two ranks: shards 0 and 2, and shard 1.
  FileDataset rank0(config, small_model(), options_for(true, dir, 0, 2));
  FileDataset rank1(config, small_model(), options_for(true, dir, 1, 2));
  EXPECT_EQ(rank0.size(), 8);
  EXPECT_EQ(rank1.size(), 4);
  EXPECT_EQ(rank1.example_name(0), dir.file("s-000001.tar") + ":000004");
  // Fewer shards than ranks: every rank reads the shard and keeps its samples.
  DatasetConfig one = shard_config(dir.file("s-000000.tar"), dir);
  std::set<std::string> seen;
  for (int rank = 0; rank < 4; ++rank) {
    FileDataset part(one, small_model(), options_for(true, dir, rank, 4));
    for (int64_t i = 0; i < part.size(); ++i) EXPECT_TRUE(seen.insert(part.example_name(i)).second);
  }
  EXPECT_EQ(seen.size(), 4u);
  // Every rank still agrees on the classes.
  EXPECT_EQ(rank1.label_sets()[0].class_names, rank0.label_sets()[0].class_names);
}

TEST(FileDataset, BatchesDoNotDependOnTheWorkerCount) {
  ScratchDir dir("fileds");
  const std::string pattern = write_image_shards(dir, 2, 4);
  auto data = std::make_shared<const FileDataset>(shard_config(pattern, dir), small_model(),
                                                  options_for(true, dir));
  TaskConfig task_config;
  task_config.name = "cls";
  task_config.dataset = "user";
  task_config.modalities = {"image"};
  task_config.objective = "softmax_ce";
  task_config.batch_size = 3;
  PlainTask task(task_config, data, 5);
  std::vector<std::vector<float>> one, three;
  for (int workers : {1, 3}) {
    BatchPrefetcher prefetcher({&task}, workers, 2);
    for (int b = 0; b < 5; ++b) {
      Batch batch = prefetcher.next(0);
      at::Tensor flat = batch.inputs.at("image").flatten().contiguous();
      (workers == 1 ? one : three).emplace_back(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
    }
  }
  EXPECT_EQ(one, three);
}

TEST(FileDataset, ManifestWithLabelMapAndQuotedCells) {
  ScratchDir dir("fileds");
  fs::create_directories(dir.file("img"));
  write(dir.file("img/a.png"), png(dir, 30, 20, "rgb(0,255,0)"));
  write(dir.file("img/b.png"), png(dir, 30, 20, "rgb(0,0,255)"));
  write(dir.file("labels.txt"), "green\nblue\n");
  write(dir.file("train.csv"),
        "image,caption,label\n"
        "img/a.png,\"a green square, bright\",green\n"
        "img/b.png,\"the \"\"blue\"\" one\",1\n"
        "img/missing.png,gone,0\n");
  DatasetConfig config;
  config.name = "user";
  config.type = "manifest";
  config.train = {dir.file("train.csv")};
  config.label_map = dir.file("labels.txt");
  config.random_resized_crop = false;
  auto data = std::make_shared<FileDataset>(config, small_model(), options_for(true, dir));
  ASSERT_EQ(data->size(), 3);
  EXPECT_EQ(data->caption(0, 0), "a green square, bright");
  EXPECT_EQ(data->caption(1, 0), "the \"blue\" one");
  EXPECT_EQ(data->label(0), 0);
  EXPECT_EQ(data->label(1), 1);
  at::Tensor first = data->example_inputs({"image"}, 1, 0).at("image");
  EXPECT_NEAR(first[2].mean().item<float>(), 1.0f, 1e-5);  // blue
  try {
    data->example_inputs({"image"}, 2, 0);
    FAIL() << "a missing file must not decode";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.reason(), "image: cannot open");
    EXPECT_NE(std::string(e.what()).find("missing.png"), std::string::npos);
  }
}

TEST(FileDataset, SeveralLabelsPerSampleGiveMultiHotTargets) {
  ScratchDir dir("fileds");
  write(dir.file("a.png"), png(dir, 16, 16, "red"));
  write(dir.file("m.jsonl"),
        "{\"image\": \"a.png\", \"labels\": [\"sky\", \"sea\"]}\n"
        "{\"image\": \"a.png\", \"labels\": [\"sea\"]}\n"
        "{\"image\": \"a.png\", \"label\": \"sand\"}\n");
  DatasetConfig config;
  config.name = "user";
  config.type = "manifest";
  config.train = {dir.file("m.jsonl")};
  auto data = std::make_shared<FileDataset>(config, small_model(), options_for(true, dir));
  const LabelSet& set = data->label_sets()[0];
  EXPECT_TRUE(set.multi_label);
  EXPECT_EQ(set.class_names, (std::vector<std::string>{"sand", "sea", "sky"}));
  EXPECT_EQ(data->label_list(0), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(data->label(0), 1);

  TaskConfig task_config;
  task_config.name = "tags";
  task_config.dataset = "user";
  task_config.modalities = {"image"};
  task_config.objective = "sigmoid_bce";
  task_config.batch_size = 3;
  PlainTask task(task_config, data, 3);
  Batch batch = task.make_batch(0);
  ASSERT_TRUE(batch.targets.defined());
  ASSERT_EQ(batch.targets.sizes(), (at::IntArrayRef{3, 3}));
  // One epoch of three samples: their labels, 2 + 1 + 1, each row holding
  // its first label.
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_FLOAT_EQ(batch.targets[b][batch.labels[b].item<int64_t>()].item<float>(), 1.0f) << b;
  }
  EXPECT_FLOAT_EQ(batch.targets.sum().item<float>(), 4.0f);

  // Softmax cross-entropy cannot learn several labels per sample.
  task_config.objective = "softmax_ce";
  EXPECT_THROW(PlainTask(task_config, data, 3), ConfigError);
}

TEST(FileDataset, VideoClipsAndTheirSoundTrack) {
  ScratchDir dir("fileds");
  run("ffmpeg -v error -f lavfi -i color=c=red:s=32x24:r=10:d=1 -f lavfi -i sine=frequency=440:duration=1 "
      "-c:v mpeg4 -c:a aac -shortest " + dir.file("clip.mp4"));
  run("ffmpeg -v error -f lavfi -i color=c=blue:s=32x24:r=10:d=1 -c:v mpeg4 " + dir.file("mute.mp4"));
  {
    ShardWriter writer(dir.file("v.tar"));
    writer.add("a.mp4", slurp(dir.file("clip.mp4")));
    writer.add("a.txt", "red");
    writer.add("b.mp4", slurp(dir.file("mute.mp4")));
    writer.add("b.txt", "blue");
    writer.close();
  }
  DatasetConfig config = shard_config(dir.file("v.tar"), dir);
  config.modalities = {"video", "audio"};
  config.frames = 4;
  FileDataset data(config, small_model(), options_for(true, dir));
  auto inputs = data.example_inputs({"video", "audio"}, 0, 3);
  ASSERT_EQ(inputs.at("video").sizes(), (at::IntArrayRef{3, 4, 16, 16}));
  EXPECT_GT(inputs.at("video")[0].mean().item<float>(), 0.8f);   // red
  EXPECT_LT(inputs.at("video")[2].mean().item<float>(), -0.8f);  // no blue
  ASSERT_EQ(inputs.at("audio").sizes(), (at::IntArrayRef{32, 32}));
  // The mute clip decodes as video but has no sound for an audio task.
  EXPECT_EQ(data.example_inputs({"video"}, 1, 3).at("video").size(1), 4);
  try {
    data.example_inputs({"video", "audio"}, 1, 3);
    FAIL() << "a clip without sound must not give audio";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.reason(), "audio: missing");
  }
}

TEST(FileDataset, AudioFilesBecomeSpectrograms) {
  ScratchDir dir("fileds");
  run("ffmpeg -v error -f lavfi -i sine=frequency=1000:sample_rate=8000:duration=0.5 " + dir.file("tone.wav"));
  {
    ShardWriter writer(dir.file("a.tar"));
    writer.add("t.wav", slurp(dir.file("tone.wav")));
    writer.add("t.cls", "3");
    writer.close();
  }
  FileDataset data(shard_config(dir.file("a.tar"), dir), small_model(), options_for(true, dir));
  EXPECT_EQ(data.modalities(), std::vector<std::string>{"audio"});
  EXPECT_EQ(data.label_sets()[0].class_names.size(), 4u);  // integer classes 0..3
  at::Tensor spec = data.example_inputs({"audio"}, 0, 0).at("audio");
  ASSERT_EQ(spec.sizes(), (at::IntArrayRef{32, 32}));
  // A 1 kHz tone: the loudest mel band is the same in every frame.
  at::Tensor loudest = spec.argmax(0);
  EXPECT_EQ(loudest.min().item<int64_t>(), loudest.max().item<int64_t>());
}

TEST(DataTools, MakeShardsThenInspect) {
  ScratchDir dir("datatools");
  write(dir.file("a.png"), png(dir, 12, 10, "red"));
  write(dir.file("b.png"), png(dir, 14, 10, "blue"));
  write(dir.file("bad.png"), "this is no png");
  write(dir.file("m.jsonl"),
        "{\"image\": \"a.png\", \"caption\": \"red\", \"label\": \"warm\"}\n"
        "{\"image\": \"b.png\", \"caption\": \"bad \xff\xfe bytes\", \"label\": \"cold\"}\n"
        "{\"image\": \"nothing.png\", \"caption\": \"lost\"}\n"
        "not json\n"
        "{\"image\": \"bad.png\", \"caption\": \"broken\"}\n");
  MakeShardsOptions options;
  options.manifest = dir.file("m.jsonl");
  options.out_dir = dir.file("shards");
  options.samples_per_shard = 2;
  const MakeShardsResult made = make_shards(options);
  EXPECT_EQ(made.samples, 3);
  EXPECT_EQ(made.skipped, 2);  // the missing file and the line that is no JSON
  ASSERT_EQ(made.shards.size(), 2u);
  EXPECT_EQ(made.pattern, dir.file("shards/shard-{000000..000001}.tar"));

  const nlohmann::json report = inspect_data({made.pattern});
  EXPECT_EQ(report["samples"], 3);
  EXPECT_EQ(report["captions"], 3);
  EXPECT_EQ(report["labels"], 2);
  EXPECT_EQ(report["modalities"]["image"]["count"], 3);
  EXPECT_EQ(report["modalities"]["image"]["failed"], 1);
  EXPECT_EQ(report["failures"]["image: unknown format"], 1);
  EXPECT_EQ(report["modalities"]["image"]["width"]["max"], 14);
  // The invalid bytes of a caption were replaced, so the report is valid JSON text.
  const std::string text = report.dump();
  EXPECT_TRUE(is_valid_utf8(text));
  EXPECT_NE(text.find("bad \xEF\xBF\xBD\xEF\xBF\xBD bytes"), std::string::npos);
  EXPECT_NE(format_inspection(report).find("image: unknown format: 1"), std::string::npos);
}

TEST(DataTools, InspectExplainsShardProblems) {
  ScratchDir dir("datatools");
  fs::create_directories(dir.file("files/sub"));
  write(dir.file("files/a.png"), png(dir, 8, 8, "red"));
  write(dir.file("files/a.txt"), "red");
  // Extra dots: the key is "b" and the extensions "v2.png" and "v2.txt".
  write(dir.file("files/b.v2.png"), png(dir, 8, 8, "blue"));
  write(dir.file("files/b.v2.txt"), "blue");
  run("tar -C " + dir.file("files") + " --format=gnu --sort=name -cf " + dir.file("s.tar") + " .");

  const nlohmann::json report = inspect_data({dir.file("s.tar")});
  EXPECT_EQ(report["samples"], 1);
  // Directory entries are not failures.
  EXPECT_GE(report["skipped_entries"].get<int64_t>(), 1);
  EXPECT_FALSE(report["failures"].contains("shard: skipped entry"));
  ASSERT_EQ(report["failures"]["shard: no image, video or audio member"], 1);
  const std::string first = report["first_failure"]["shard: no image, video or audio member"];
  EXPECT_NE(first.find("v2.png"), std::string::npos) << first;
  EXPECT_NE(first.find("first dot"), std::string::npos) << first;
}

TEST(Utf8, ReplacesInvalidBytesOnly) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("caf\xC3\xA9 \xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));        // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));    // a UTF-16 surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_EQ(to_valid_utf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(to_valid_utf8("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(to_valid_utf8("cut \xE2\x82"), "cut \xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Manifest, CsvAndJsonLinesAgree) {
  ScratchDir dir("manifest");
  write(dir.file("m.csv"),
        "\xEF\xBB\xBFImage,Caption,labels\r\n"
        "a.jpg,\"two\nlines\",x;y\r\n"
        "\r\n"
        "b.jpg,,z\r\n"
        "c.jpg,too,many,cells\r\n");
  const Manifest csv = read_manifest(dir.file("m.csv"));
  ASSERT_EQ(csv.rows.size(), 2u);
  EXPECT_EQ(csv.rows[0].fields.at("image"), "a.jpg");
  EXPECT_EQ(csv.rows[0].fields.at("caption"), "two\nlines");
  EXPECT_EQ(csv.rows[0].labels, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(csv.rows[1].line, 5);  // the quoted line break and the blank line count
  EXPECT_EQ(csv.rows[1].fields.count("caption"), 0u);  // empty cells are absent
  ASSERT_EQ(csv.problems.size(), 1u);
  EXPECT_NE(csv.problems[0].find("line 6"), std::string::npos);

  write(dir.file("m.jsonl"), "{\"image\": \"a.jpg\", \"label\": 7, \"labels\": [\"x\", 2]}\n\n[1]\n");
  const Manifest jsonl = read_manifest(dir.file("m.jsonl"));
  ASSERT_EQ(jsonl.rows.size(), 1u);
  EXPECT_EQ(jsonl.rows[0].fields.at("label"), "7");
  EXPECT_EQ(jsonl.rows[0].labels, (std::vector<std::string>{"x", "2"}));
  EXPECT_EQ(jsonl.problems.size(), 1u);

  write(dir.file("open.csv"), "image,caption\na.jpg,\"never closed\n");
  EXPECT_THROW(read_manifest(dir.file("open.csv")), DataError);
  EXPECT_THROW(read_manifest(dir.file("m.txt")), DataError);
}

}  // namespace
}  // namespace imp
