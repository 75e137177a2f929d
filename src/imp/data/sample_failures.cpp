#include "imp/data/sample_failures.h"

#include <algorithm>
#include <cstdio>

#include "imp/core/error.h"
#include "imp/core/utf8.h"

namespace imp {

SampleFailures::SampleFailures(std::string source, double max_fraction, int64_t min_tries,
                               std::ostream* log)
    : source_(std::move(source)), max_fraction_(max_fraction), min_tries_(min_tries), log_(log) {}

void SampleFailures::record_success() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++tries_;
}

void SampleFailures::record_failure(const std::string& reason, const std::string& message,
                                    int64_t sample) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++tries_;
  ++failures_;
  const int64_t count = ++by_reason_[reason];
  const bool repeated = sample >= 0 && !logged_.emplace(sample, reason).second;
  if (log_ != nullptr && !repeated && (count <= kLoggedPerReason || count % 1000 == 0)) {
    *log_ << "warning: " << source_ << ": skipped a sample (" << reason << ", " << count
          << (count == 1 ? " time" : " times") << " so far): " << to_valid_utf8(message);
    if (count == kLoggedPerReason) *log_ << " [further '" << reason << "' failures are logged every 1000th]";
    *log_ << '\n';
  }
  const bool judged = tries_ >= min_tries_ || (failures_ == tries_ && tries_ >= 20);
  if (judged && static_cast<double>(failures_) > max_fraction_ * static_cast<double>(tries_)) {
    throw TrainingError(str_cat(source_, ": ", summary_locked(),
                                ", more than the allowed share max_bad_fraction = ", max_fraction_,
                                ". Check the data (imp data inspect PATH lists failures per "
                                "reason) or raise max_bad_fraction"));
  }
}

void SampleFailures::mark_undecodable(int64_t sample, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  undecodable_.emplace(sample, reason);
}

std::string SampleFailures::undecodable_reason(int64_t sample,
                                               const std::vector<std::string>& modalities) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto range = undecodable_.equal_range(sample);
  for (auto it = range.first; it != range.second; ++it) {
    const std::string part = it->second.substr(0, it->second.find(':'));
    const bool is_modality = part == "image" || part == "video" || part == "audio";
    if (!is_modality || std::find(modalities.begin(), modalities.end(), part) != modalities.end()) {
      return it->second;
    }
  }
  return "";
}

int64_t SampleFailures::tries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tries_;
}

int64_t SampleFailures::failures() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failures_;
}

std::map<std::string, int64_t> SampleFailures::by_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return by_reason_;
}

std::string SampleFailures::summary() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return summary_locked();
}

std::string SampleFailures::summary_locked() const {
  if (failures_ == 0) return str_cat("no samples skipped (", tries_, " tried)");
  char share[32];
  std::snprintf(share, sizeof share, "%.2f%%", 100.0 * failures_ / tries_);
  std::set<int64_t> distinct;
  for (const auto& [sample, reason] : logged_) distinct.insert(sample);
  // A bad sample drawn again is skipped again: the counts are of draws.
  std::string text = str_cat(failures_, " of ", tries_, " samples drawn were skipped (", share, "; ",
                             distinct.size(), " distinct): ");
  bool first = true;
  for (const auto& [reason, count] : by_reason_) {
    text += str_cat(first ? "" : ", ", reason, " ", count);
    first = false;
  }
  return text;
}

}  // namespace imp
