// `imp report RUN_DIR`: one self-contained HTML page that summarizes a
// training run from the files the trainer wrote into its run directory.
//
// The page works offline: its styles are inline, its charts are inline SVG
// drawn here, and it loads no scripts, fonts or images. Files read:
//   metrics.jsonl  (required) one JSON object per logging interval
//   evals.jsonl    evaluation metrics over time
//   eval.json      final metrics
//   routing.json   expert-by-modality routing counts per MoE layer
//   config.yaml    shown verbatim
// A missing optional file leaves its section out, with a sentence naming the
// file. Every string taken from the files is HTML-escaped.
#pragma once

#include <string>

namespace imp {

// Builds the page from the files of `run_dir`. Throws DataError naming the
// file and line when one is unreadable or malformed, and when metrics.jsonl
// is missing or has no records. In eval.json and routing.json, a value of
// the wrong type is named by its key instead of a line.
std::string render_report(const std::string& run_dir);

// Writes RUN_DIR/report.html atomically (a temporary file in RUN_DIR, then
// rename) and returns its path. Throws DataError as render_report does, or
// when the file cannot be written.
std::string write_report(const std::string& run_dir);

}  // namespace imp
