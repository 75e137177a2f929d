// Synthetic captions for labelled images. A caption combines the class name
// with attributes measured on the image's own pixels, so every word in it is
// true of the image. Templates vary the wording.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace imp {

// Coarse appearance of an image on a zero (black) background.
struct ImageAttributes {
  std::string brightness;  // "dark" or "light": mean of the non-zero pixels
  std::string size;        // "small" or "large": fraction of non-zero pixels
};

// Measures the attributes of one [H, W] uint8 image.
ImageAttributes image_attributes(const torch::Tensor& image);

// Builds a caption such as "a small dark sandal" from one of the caption
// templates, chosen by `variant` modulo their count. The same inputs always
// give the same caption.
std::string make_caption(const std::string& class_name, const ImageAttributes& attributes,
                         uint64_t variant);

// Every caption that make_caption can produce for these classes, without
// duplicates, class by class.
std::vector<std::string> all_captions(const std::vector<std::string>& class_names);

// Returns every caption that make_caption can produce for these classes, then
// every default prompt filled with every class, without duplicates. It is the
// text a tokenizer for these captions and prompts is trained on.
std::vector<std::string> caption_corpus(const std::vector<std::string>& class_names);

// Replaces every occurrence of `placeholder` in `text` with `value`.
void replace_all(std::string& text, const std::string& placeholder, const std::string& value);

// Sets each "a"/"an" in `text` to fit the word after it ("a ankle boot"
// becomes "an ankle boot"). Words are rejoined with single spaces.
std::string fix_articles(const std::string& text);

// Zero-shot prompt templates, "{}" standing for the class name.
std::vector<std::string> default_prompts();

// Replaces "{}" in `templ` with `class_name` and corrects "a"/"an" before the
// words that follow, e.g. "a {}" with "ankle boot" gives "an ankle boot".
std::string fill_prompt(const std::string& templ, const std::string& class_name);

}  // namespace imp
