// Bookkeeping for samples a data pipeline had to skip: files that fail to
// decode, samples that lack a modality, a caption or a label the task needs.
// A skipped sample is counted per reason and logged; the run stops only when
// the share of skipped samples passes a configured limit.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <ostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace imp {

class SampleFailures {
 public:
  // `source` names the data in messages, e.g. "dataset 'laion' (train)".
  // Failing more than `max_fraction` of the tries stops the run, judged once
  // at least `min_tries` samples were tried (and whenever all have failed
  // after 20). `log` receives the warnings; null keeps them quiet.
  SampleFailures(std::string source, double max_fraction, int64_t min_tries = 200,
                 std::ostream* log = nullptr);

  void record_success();
  // Counts one skipped sample. The first few failures of each reason are
  // logged with their message, then every 1000th, so that a broken shard
  // does not flood the log. A sample that failed before for the same reason
  // (same `sample` index, when given) is counted but not logged again.
  // Throws TrainingError with the counts per reason when the limit is passed.
  void record_failure(const std::string& reason, const std::string& message, int64_t sample = -1);

  // Remembers that `sample` cannot be decoded, for `reason`, so that later
  // draws skip it without decoding it again. A reason that starts with a
  // modality ("audio: missing") concerns only that modality.
  void mark_undecodable(int64_t sample, const std::string& reason);
  // The reason `sample` was marked undecodable for any of `modalities`, or
  // "" when it was not.
  std::string undecodable_reason(int64_t sample, const std::vector<std::string>& modalities) const;

  int64_t tries() const;
  int64_t failures() const;
  std::map<std::string, int64_t> by_reason() const;
  // "12 of 5000 samples drawn were skipped (0.24%; 3 distinct): image:
  // truncated 10, caption: missing 2", or "no samples skipped (5000 tried)".
  std::string summary() const;

  // Failures of each reason logged in full before the log thins out.
  static constexpr int64_t kLoggedPerReason = 5;

 private:
  std::string summary_locked() const;

  std::string source_;
  double max_fraction_;
  int64_t min_tries_;
  std::ostream* log_;
  mutable std::mutex mutex_;
  int64_t tries_ = 0;
  int64_t failures_ = 0;
  std::map<std::string, int64_t> by_reason_;
  std::set<std::pair<int64_t, std::string>> logged_;  // (sample, reason) already logged
  std::multimap<int64_t, std::string> undecodable_;   // sample -> reasons
};

}  // namespace imp
