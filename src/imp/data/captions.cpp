#include "imp/data/captions.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <sstream>

namespace imp {
namespace {

// Thresholds sit near the medians over the 60000 Fashion-MNIST training
// images, so each attribute value describes about half of them overall.
// Within a class the split can be far from even: most sandals and sneakers
// are small and dark.
// Brightness: the mean of the non-zero pixels has quartiles 114.3, 150.7 and
// 179.3; above 150 is "light" (50.5% of the training images).
// Size: the fraction of non-zero pixels has quartiles 0.364, 0.513 and 0.619;
// above 0.5 is "large" (51.8% of the training images).
constexpr double kLightMeanThreshold = 150.0;
constexpr double kLargeFractionThreshold = 0.5;

const std::vector<std::string> kBrightnessValues = {"dark", "light"};
const std::vector<std::string> kSizeValues = {"small", "large"};

// Caption templates. Every article is written "a" and corrected after filling.
const std::vector<std::string> kCaptionTemplates = {
    "a photo of a {class}",
    "a {brightness} {class}",
    "a {size} {brightness} {class}",
    "a picture of a {size} {class}",
    "{class}",
    "a photo of a {brightness} {class}",
    "a image of a {size} {class}",
    "a {size} {class}",
    "a {brightness} {class} on a black background",
    "a grayscale photo of a {size} {brightness} {class}",
};

// A spelling heuristic, not a pronunciation dictionary: a vowel letter means
// a vowel sound except in the listed prefixes, and a few words start with a
// silent "h". It is right for the class names of the datasets used here.
bool starts_with_vowel_sound(const std::string& word) {
  static const std::vector<std::string> kConsonantSoundPrefixes = {"uni", "use", "usu", "uti", "eu", "one"};
  static const std::vector<std::string> kSilentHPrefixes = {"hour", "honest", "honor", "heir"};
  std::string lower = word;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto starts_with_any = [&](const std::vector<std::string>& prefixes) {
    return std::any_of(prefixes.begin(), prefixes.end(),
                       [&](const std::string& prefix) { return lower.rfind(prefix, 0) == 0; });
  };
  if (starts_with_any(kSilentHPrefixes)) return true;
  if (lower.empty() || std::string("aeiou").find(lower[0]) == std::string::npos) return false;
  return !starts_with_any(kConsonantSoundPrefixes);
}

}  // namespace

void replace_all(std::string& text, const std::string& placeholder, const std::string& value) {
  for (size_t pos = text.find(placeholder); pos != std::string::npos;
       pos = text.find(placeholder, pos + value.size())) {
    text.replace(pos, placeholder.size(), value);
  }
}

std::string fix_articles(const std::string& text) {
  std::istringstream stream(text);
  std::vector<std::string> words;
  for (std::string word; stream >> word;) words.push_back(word);

  std::string fixed;
  for (size_t i = 0; i < words.size(); ++i) {
    std::string word = words[i];
    const bool is_article = word == "a" || word == "an" || word == "A" || word == "An";
    if (is_article && i + 1 < words.size()) {
      const std::string article = starts_with_vowel_sound(words[i + 1]) ? "an" : "a";
      word = std::isupper(static_cast<unsigned char>(word[0])) ? "A" + article.substr(1) : article;
    }
    fixed += (i == 0 ? "" : " ") + word;
  }
  return fixed;
}

ImageAttributes image_attributes(const torch::Tensor& image) {
  TORCH_CHECK(image.dim() == 2 && image.scalar_type() == torch::kUInt8,
              "image_attributes expects a [H, W] uint8 image, got ", image.scalar_type(), " ", image.sizes());
  const torch::Tensor foreground = image > 0;
  const int64_t foreground_count = foreground.sum().item<int64_t>();
  const double fraction = static_cast<double>(foreground_count) / std::max<int64_t>(image.numel(), 1);
  // An all-black image has no foreground to measure, so it reads as dark.
  const double mean = foreground_count == 0
                          ? 0.0
                          : image.to(torch::kFloat64).sum().item<double>() / foreground_count;

  ImageAttributes attributes;
  attributes.brightness = mean > kLightMeanThreshold ? "light" : "dark";
  attributes.size = fraction > kLargeFractionThreshold ? "large" : "small";
  return attributes;
}

std::string make_caption(const std::string& class_name, const ImageAttributes& attributes,
                         uint64_t variant) {
  std::string caption = kCaptionTemplates[variant % kCaptionTemplates.size()];
  replace_all(caption, "{class}", class_name);
  replace_all(caption, "{brightness}", attributes.brightness);
  replace_all(caption, "{size}", attributes.size);
  return fix_articles(caption);
}

std::vector<std::string> all_captions(const std::vector<std::string>& class_names) {
  std::vector<std::string> captions;
  std::set<std::string> seen;
  for (const std::string& class_name : class_names) {
    for (const std::string& brightness : kBrightnessValues) {
      for (const std::string& size : kSizeValues) {
        for (uint64_t variant = 0; variant < kCaptionTemplates.size(); ++variant) {
          std::string caption = make_caption(class_name, {brightness, size}, variant);
          if (seen.insert(caption).second) captions.push_back(std::move(caption));
        }
      }
    }
  }
  return captions;
}

std::vector<std::string> caption_corpus(const std::vector<std::string>& class_names) {
  std::vector<std::string> corpus;
  std::set<std::string> seen;
  auto add = [&](const std::string& text) {
    if (seen.insert(text).second) corpus.push_back(text);
  };

  for (const std::string& caption : all_captions(class_names)) add(caption);
  for (const std::string& prompt : default_prompts()) {
    for (const std::string& class_name : class_names) add(fill_prompt(prompt, class_name));
  }
  return corpus;
}

std::vector<std::string> default_prompts() {
  return {
      "a photo of a {}",
      "a {}",
      "a picture of a {}",
      "an image of a {}",
      "a grayscale photo of a {}",
      "a photo of the {}",
  };
}

std::string fill_prompt(const std::string& templ, const std::string& class_name) {
  std::string text = templ;
  replace_all(text, "{}", class_name);
  return fix_articles(text);
}

}  // namespace imp
