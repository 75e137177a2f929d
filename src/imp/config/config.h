// The typed run configuration. load_config() parses a YAML file (see
// configs/default.yaml) into these structs. Every field here has exactly one
// YAML key of the same name, in the section of the same name.
// Defaults below are the values used when a key is absent.
#pragma once

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace imp {

// Mixture-of-Experts feed-forward layers of the encoder.
struct MoeConfig {
  int num_experts = 0;             // experts per MoE layer; 0 = dense encoder
  int moe_every = 2;               // every N-th layer, counted from the last, is MoE
  int max_moe_layers = 0;          // at most this many MoE layers; 0 = no limit
  std::string router = "experts_choose";  // or "token_choice"
  double capacity_factor = 1.0;    // expert slots = tokens x capacity_factor / experts
  int top_k = 1;                   // experts per token, token_choice only
  int group_size = 2048;           // tokens are routed in groups of at most this many
  double aux_loss_weight = 0.0;    // load-balancing loss weight, token_choice only
};

// Video and image patch embedder: an image is a clip of `frames` frames.
struct VisionConfig {
  int channels = 3;                       // colour channels of the input
  std::array<int, 3> patch{4, 16, 16};    // patch size in frames x pixels x pixels
  std::array<int, 3> grid{1, 16, 16};     // patch grid the position embedding is made for
};

// Audio front end (waveform to log-mel spectrogram) and its patch embedder.
// A clip is cut or zero-padded to (frames - 1) x hop + window samples, which
// gives exactly `frames` spectrogram frames.
struct AudioConfig {
  int sample_rate = 16000;                // Hz; audio at other rates is resampled
  int window = 400;                       // STFT window (Hann) and FFT size, in samples
  int hop = 160;                          // samples between frames
  int mel_bands = 128;                    // M, mel filters from f_min to f_max
  int frames = 128;                       // F, spectrogram frames per clip
  double f_min = 0.0;                     // Hz, lowest mel filter edge
  double f_max = 0.0;                     // Hz, highest mel filter edge; 0 = sample_rate / 2
  std::array<int, 2> patch{16, 16};       // patch size in mel bands x time frames
  std::array<int, 2> grid{8, 8};          // patch grid the position embedding is made for
};

// Text token embedder; the vocabulary size comes from the tokenizer.
struct TextConfig {
  int max_len = 16;                       // tokens per text, end-of-text included
  // Tokens of label text (a class name in a prompt), in label-text NCE and
  // zero-shot classification; at most max_len. Class names are short, so
  // this keeps those batches small when captions need a long max_len.
  int label_max_len = 16;
};

// A parsed config starts from model_preset(preset), and each key given under
// `model` then replaces one value. The defaults below apply only to a
// ModelConfig built in code, and they differ from the tiny preset.
struct ModelConfig {
  std::string preset = "tiny";     // named size, see presets.h; explicit keys override it
  int d_model = 128;               // width of the encoder
  int num_layers = 4;
  int num_heads = 4;
  int mlp_dim = 512;               // hidden width of each feed-forward layer (and expert)
  int embed_dim = 128;             // width of the shared contrastive embedding space
  double temperature_init = 0.1;   // initial NCE temperature (learned afterwards)
  double max_logit_scale = 100.0;  // cap on 1 / temperature
  MoeConfig moe;
  VisionConfig vision;
  AudioConfig audio;
  TextConfig text;
};

// Source of the SentencePiece model.
struct TokenizerConfig {
  std::string model;               // path to a .model file; empty = train one on the captions
  int vocab_size = 256;            // vocabulary size when training
};

// A data source, by type:
//   fashion_mnist         the images of the Fashion-MNIST release (idx files)
//   moving_fashion_mnist  videos of one Fashion-MNIST item moving, turning or
//                         zooming on a larger canvas, with captions and
//                         spoken captions
//   spoken_fashion_mnist  spoken captions of Fashion-MNIST items
// All three read the idx files under `root`; the train split is made from
// the training images and the test split from the test images.
//   webdataset            the user's tar shards (WebDataset layout)
//   manifest              the user's files listed in a CSV or JSONL manifest
struct DatasetConfig {
  std::string name;                // referred to by tasks and used in metric names
  std::string type = "fashion_mnist";
  std::string root = "/usr/share/datasets/fashion-mnist";  // folder of the *.gz idx files
  bool hflip = true;               // random horizontal flip of training images
  // fashion_mnist: random translation of training images by up to this many
  // pixels along each axis. The pixels uncovered are background.
  int max_shift = 0;
  int eval_examples = 0;           // test examples evaluated, evenly spaced; 0 = all

  // moving_fashion_mnist: each video has video_frames frames; a clip is a
  // window of `frames` of them, at a random start in training.
  int frames = 8;
  int video_frames = 12;
  int canvas = 35;                 // side of the square frame, in pixels
  int eval_clips = 8;              // clips per test video, evenly spaced; outputs are averaged
  std::vector<std::string> motions{"left", "right", "up", "down", "clockwise",
                                   "counterclockwise", "zoom_in", "zoom_out"};

  // Speech (moving_ and spoken_fashion_mnist), synthesised with eSpeak NG.
  // A voice is "<language>+<variant>" as `espeak-ng --voices` and
  // `--voices=variant` list them. Test audio uses only eval_voices, which
  // must not overlap `voices`.
  // The default training voices are five English accents ("en" is British)
  // times eight variants; the evaluation variants m2, m6, f2 and f4 appear
  // in no training voice.
  std::vector<std::string> voices{"en-us+m1", "en-us+m3", "en-us+m4", "en-us+m5",
                                  "en-us+m7", "en-us+f1", "en-us+f3", "en-us+f5",
                                  "en+m1", "en+m3", "en+m4", "en+m5",
                                  "en+m7", "en+f1", "en+f3", "en+f5",
                                  "en-gb-scotland+m1", "en-gb-scotland+m3", "en-gb-scotland+m4", "en-gb-scotland+m5",
                                  "en-gb-scotland+m7", "en-gb-scotland+f1", "en-gb-scotland+f3", "en-gb-scotland+f5",
                                  "en-gb-x-rp+m1", "en-gb-x-rp+m3", "en-gb-x-rp+m4", "en-gb-x-rp+m5",
                                  "en-gb-x-rp+m7", "en-gb-x-rp+f1", "en-gb-x-rp+f3", "en-gb-x-rp+f5",
                                  "en-029+m1", "en-029+m3", "en-029+m4", "en-029+m5",
                                  "en-029+m7", "en-029+f1", "en-029+f3", "en-029+f5"};
  std::vector<std::string> eval_voices{"en-us+m2", "en-us+f2", "en+m6", "en+f4"};
  std::vector<int> speech_rates{150, 175, 200};  // words per minute
  std::vector<int> speech_pitches{35, 50, 65};   // eSpeak pitch, 0 to 100
  int renditions = 10;             // spoken versions of each distinct text, per split

  // webdataset and manifest: the user's own files. `train` and `test` name
  // the splits: for webdataset, tar shards or brace patterns such as
  // "shards/train-{000000..000127}.tar"; for manifest, one .csv or .jsonl
  // file whose paths are relative to its folder (see data/manifest.h).
  // Relative shard and manifest paths start at the current directory.
  std::vector<std::string> train;
  std::vector<std::string> test;
  // Inputs the samples offer, from image, video and audio; empty = every
  // modality found in the data. Audio may come from a video's sound track.
  std::vector<std::string> modalities;
  // webdataset: member extensions (lower case) that hold each part of a
  // sample, the first present wins. A .json member may also carry "caption"
  // and "label" fields.
  std::vector<std::string> image_ext{"jpg", "jpeg", "png", "webp"};
  std::vector<std::string> video_ext{"mp4", "webm", "mkv", "mov", "avi"};
  std::vector<std::string> audio_ext{"flac", "wav", "ogg", "mp3"};
  std::vector<std::string> caption_ext{"txt"};
  std::vector<std::string> label_ext{"cls"};
  // Class names, one per line; a label is a line's text or its 0-based
  // index. Empty: the classes found in the train split (integers as they
  // are, names sorted), remembered under cache_dir/labels.
  std::string label_map;
  std::array<int, 2> image_size{0, 0};  // height, width fed to the model; 0 = model grid x patch
  bool random_resized_crop = true; // training crops: random area and aspect ratio; off = centre crop
  double crop_min_scale = 0.35;    // smallest crop area, as a fraction of the image
  double video_fps = 0.0;          // frames per second sampled; 0 = `frames` spread over the clip
  double max_megapixels = 89.0;    // larger images and videos are rejected before decoding
  double decode_timeout = 20.0;    // seconds one sample may take to decode
  int shuffle_buffer = 2000;       // samples mixed across shards while reading
  double max_bad_fraction = 0.05;  // skipped samples allowed before the run stops
};

// One AGD task: a dataset, the modalities it feeds and one objective.
struct TaskConfig {
  std::string name;
  std::string dataset;             // a DatasetConfig name
  std::vector<std::string> modalities;  // e.g. [image] or [image, text]
  std::string objective;           // softmax_ce, sigmoid_bce or nce
  std::string text = "caption";    // for nce with text: "caption" or "label" (the class name)
  std::string label;               // label set to classify or to name in label text;
                                   // empty = the dataset's first (e.g. item before motion)
  int batch_size = 128;
  double weight = -1.0;            // sampling weight; < 0 = proportional to dataset size
  double drop_tokens = 0.0;        // DropToken: share of image, video and audio tokens dropped in training
  bool rematerialize = false;      // recompute encoder blocks in the backward pass to save memory
  double resolution_scale = 1.0;   // image and video inputs resized by this factor per side
  // "method": add the method's multi-resolution variants of this image or
  // video task (tasks/variants.h), which share its sampling weight; "none".
  std::string variants = "none";
};

struct OptimizerConfig {
  double lr = 1e-3;                // peak learning rate
  double end_lr = 0.0;             // learning rate at the last step
  int warmup_steps = 100;          // linear warmup from 0 to lr
  double weight_decay = 0.0;       // decoupled (AdamW) weight decay
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-7;
  double clip_grad_norm = 1.0;     // global gradient norm cap; 0 = off
};

struct TrainConfig {
  int steps = 1000;
  unsigned long long seed = 0;
  std::string sampler = "multinomial";  // or "round_robin"
  int log_every = 50;              // steps between log lines
  int threads = 0;                 // intra-op threads; 0 = OMP_NUM_THREADS, else the cores shared by this machine's processes
  int workers = 2;                 // background threads that prepare batches
  int prefetch = 2;                // batches kept ready per task
  std::string dtype = "fp32";      // fp32 or bf16 (autocast; weights stay fp32)
  int checkpoint_every = 1000;     // steps between checkpoints; 0 = only after the last step
  int keep_checkpoints = 3;        // newest checkpoints kept under <workdir>/checkpoints
  std::string progress = "auto";   // live (one updating line), lines, or auto (live on a terminal)
  bool tensorboard = true;         // TensorBoard event files in <workdir>/tensorboard
  int collective_timeout = 1800;   // seconds a rank waits for the others in a multi-process run
  // Freed CPU tensor memory kept for reuse by later steps, in MiB
  // (src/imp/core/cpu_cache.h); -1 = a quarter of the machine's memory, 0 = none.
  int cpu_cache_mb = -1;
  // In a multi-process run, shard each MoE layer's experts across the
  // processes (num_experts divisible by their number) instead of copying
  // them to every process. Tokens travel to their experts by all-to-all.
  bool expert_parallel = false;
  OptimizerConfig optimizer;
};

struct EvalConfig {
  int batch_size = 500;
  std::vector<std::string> prompts;     // zero-shot templates, "{}" = class name; empty = built-in
  std::vector<int> recall_at{1, 5};
  int linear_probe_examples = 10000;    // training examples the probe is fitted on
  int linear_probe_steps = 300;         // full-batch optimisation steps of the probe
  int every = 0;                        // steps between evaluations in training; 0 = only at the end
};

struct Config {
  std::string source;              // file the config came from, for messages
  std::string workdir = "runs/default";
  std::string cache_dir = "cache"; // prepared data (e.g. the trained tokenizer)
  ModelConfig model;
  TokenizerConfig tokenizer;
  std::vector<DatasetConfig> datasets;
  std::vector<TaskConfig> tasks;
  TrainConfig train;
  EvalConfig eval;
};

// Tokens of label text: text.label_max_len, capped at text.max_len.
inline int label_text_length(const TextConfig& text) {
  return text.label_max_len < text.max_len ? text.label_max_len : text.max_len;
}

// Parses a YAML file, applies `overrides` ("section.key=value", applied in
// order after the file) and validates the result. Throws ConfigError naming
// the file, the key and what is wrong.
//
// An override's value is parsed as YAML, as in train.steps=200,
// model.vision.patch=[1,7,7] or eval.prompts=["a {}"], and an empty value is
// the empty string. Entries of `tasks` and `datasets` are addressed by name
// or by index, as in tasks.fmnist_cls.batch_size=64 or tasks.0.batch_size=64.
Config load_config(const std::string& path,
                   const std::vector<std::string>& overrides = {});

// Same as load_config, from YAML text; `source` names it in messages.
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});

// An override "key='value'" that sets `key` to the string `value` verbatim,
// quoted so that YAML reads paths with ": ", "#" or a leading "[" as text.
std::string string_override(const std::string& key, const std::string& value);

// The resolved config as YAML, every key present; parse_config(to_yaml(c))
// gives back `c`.
std::string to_yaml(const Config& config);

}  // namespace imp
