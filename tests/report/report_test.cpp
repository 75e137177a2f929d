// Tests for the HTML run report, on small run directories written by hand.
#include "imp/report/report.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "imp/core/error.h"
#include "../scratch_dir.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

void write_file(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
}

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++count;
  return count;
}

// The markup of the SVG with the given id, from its id attribute to </svg>;
// empty when the page has no such element.
std::string svg_with_id(const std::string& html, const std::string& id) {
  const size_t start = html.find("id=\"" + id + "\"");
  if (start == std::string::npos) return "";
  const size_t end = html.find("</svg>", start);
  return html.substr(start, end - start);
}

// The number of points of each polyline in `svg`, in document order.
std::vector<size_t> polyline_point_counts(const std::string& svg) {
  std::vector<size_t> counts;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    const size_t begin = svg.find("points=\"", at) + 8;
    const size_t end = svg.find('"', begin);
    std::istringstream points(svg.substr(begin, end - begin));
    size_t count = 0;
    for (std::string point; points >> point;) ++count;
    counts.push_back(count);
  }
  return counts;
}

// The texts printed in heatmap cells, in document order.
std::vector<std::string> cell_values(const std::string& svg) {
  std::vector<std::string> values;
  const std::string marker = "class=\"cell-value\"";
  for (size_t at = svg.find(marker); at != std::string::npos; at = svg.find(marker, at + 1)) {
    const size_t begin = svg.find('>', at) + 1;
    values.push_back(svg.substr(begin, svg.find('<', begin) - begin));
  }
  return values;
}

std::string render_error(const std::string& run_dir) {
  try {
    render_report(run_dir);
  } catch (const DataError& error) {
    return error.what();
  }
  return "";
}

const char kMetrics[] =
    "{\"step\": 100, \"total_steps\": 300, \"wall_s\": 10.0, \"lr\": 0.001, \"loss\": {\"fmnist_cls\": 2.0, "
    "\"video_item\": 3.0}, \"steps\": {\"fmnist_cls\": 60, \"video_item\": 40}, \"tokens_per_s\": 50000.0, "
    "\"examples_per_s\": 3000.0, \"ms_per_step\": 80.0, \"data_wait\": 0.01}\n"
    "{\"step\": 200, \"total_steps\": 300, \"wall_s\": 20.0, \"lr\": 0.0008, \"loss\": {\"fmnist_cls\": 1.5}, "
    "\"tokens_per_s\": 52000.0}\n"
    "{\"step\": 300, \"total_steps\": 300, \"wall_s\": 30.0, \"lr\": 0.0005, \"loss\": {\"fmnist_cls\": 1.0, "
    "\"video_item\": 2.5}, \"tokens_per_s\": 51000.0}\n";

const char kRouting[] =
    "{\"layers\": [\n"
    "  {\"layer\": 1, \"modalities\": {\n"
    "    \"image\": {\"tokens_per_expert\": [30, 20, 25, 25], \"expert_share\": [0.3, 0.2, 0.25, 0.25],\n"
    "              \"top_choice_per_expert\": [10, 50, 20, 20], \"top_choice_share\": [0.1, 0.5, 0.2, 0.2],\n"
    "              \"num_tokens\": 100, \"dropped_tokens\": 0, \"dropped_fraction\": 0.0, \"num_passes\": 10},\n"
    "    \"audio\": {\"top_choice_share\": [0.25, 0.25, 0.3, 0.2], \"num_tokens\": 40}}},\n"
    "  {\"layer\": 3, \"modalities\": {\"image\": {\"top_choice_share\": [0.7, 0.1, 0.1, 0.1]}}}\n"
    "]}\n";

const char kEvals[] =
    "{\"step\": 100, \"metrics\": {\"fmnist/head_top1\": 0.5, \"fmnist/probe_top1\": 0.4, "
    "\"fmnist_video/item_zeroshot_top1\": 0.3}}\n"
    "{\"step\": 300, \"metrics\": {\"fmnist/head_top1\": 0.8811, \"fmnist/probe_top1\": 0.8, "
    "\"fmnist_video/item_zeroshot_top1\": 0.7475}}\n";

// Writes a run directory with every file the report reads.
void write_full_run(const testing::ScratchDir& run) {
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("evals.jsonl"), kEvals);
  write_file(run.file("eval.json"), "{\"fmnist/head_top1\": 0.8811, \"train_seconds\": 548.6}\n");
  write_file(run.file("routing.json"), kRouting);
  write_file(run.file("config.yaml"), "model:\n  preset: tiny # <small>\n");
}

TEST(Report, LossChartHasPolylinePerTask) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  const std::string html = render_report(run.path());
  const std::string chart = svg_with_id(html, "chart-loss");
  ASSERT_FALSE(chart.empty());
  EXPECT_NE(chart.find("<title>"), std::string::npos);
  EXPECT_NE(html.find("aria-label=\"Training loss"), std::string::npos);
  // video_item is missing from the step-200 line, so its line has 2 points.
  EXPECT_EQ(polyline_point_counts(chart), (std::vector<size_t>{3, 2}));
  EXPECT_NE(chart.find("data-series=\"fmnist_cls\""), std::string::npos);
  EXPECT_NE(chart.find("data-series=\"video_item\""), std::string::npos);
}

TEST(Report, LearningRateAndThroughputCharts) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  const std::string html = render_report(run.path());
  EXPECT_EQ(polyline_point_counts(svg_with_id(html, "chart-lr")), (std::vector<size_t>{3}));
  EXPECT_EQ(polyline_point_counts(svg_with_id(html, "chart-tokens-per-s")), (std::vector<size_t>{3}));
}

TEST(Report, LogScaleOnlyBeyondTenfold) {
  testing::ScratchDir wide("report");
  write_file(wide.file("metrics.jsonl"),
             "{\"step\": 1, \"loss\": {\"a\": 20.0}}\n{\"step\": 2, \"loss\": {\"a\": 0.5}}\n");
  EXPECT_NE(svg_with_id(render_report(wide.path()), "chart-loss").find("(log scale)"), std::string::npos);

  testing::ScratchDir narrow("report");
  write_file(narrow.file("metrics.jsonl"),
             "{\"step\": 1, \"loss\": {\"a\": 4.0}}\n{\"step\": 2, \"loss\": {\"a\": 0.5}}\n");
  EXPECT_EQ(svg_with_id(render_report(narrow.path()), "chart-loss").find("(log scale)"), std::string::npos);
}

TEST(Report, RepeatedStepLaterLineWins) {
  testing::ScratchDir run("report");
  // A run resumed from step 100 logs steps 200 and 300 again.
  write_file(run.file("metrics.jsonl"),
             "{\"step\": 100, \"loss\": {\"a\": 2.0}}\n"
             "{\"step\": 200, \"loss\": {\"a\": 9.125}}\n"
             "{\"step\": 300, \"loss\": {\"a\": 8.375}}\n"
             "{\"step\": 200, \"loss\": {\"a\": 1.5}}\n"
             "{\"step\": 300, \"loss\": {\"a\": 1.25}}\n");
  const std::string html = render_report(run.path());
  const std::string chart = svg_with_id(html, "chart-loss");
  EXPECT_EQ(polyline_point_counts(chart), (std::vector<size_t>{3}));
  EXPECT_NE(chart.find("a at step 200: 1.5<"), std::string::npos);
  EXPECT_NE(chart.find("a at step 300: 1.25<"), std::string::npos);
  EXPECT_EQ(html.find("9.125"), std::string::npos);
  EXPECT_EQ(html.find("8.375"), std::string::npos);
  EXPECT_NE(html.find("<td>3</td>"), std::string::npos);  // three logging intervals
}

TEST(Report, HeatmapCellsPrintShares) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string html = render_report(run.path());
  const std::string layer1 = svg_with_id(html, "heatmap-layer-1");
  ASSERT_FALSE(layer1.empty());
  EXPECT_NE(layer1.find("<title>"), std::string::npos);
  // Rows in file order (image, audio), columns by expert.
  EXPECT_EQ(cell_values(layer1),
            (std::vector<std::string>{"0.10", "0.50", "0.20", "0.20", "0.25", "0.25", "0.30", "0.20"}));
  EXPECT_NE(layer1.find(">image<"), std::string::npos);
  EXPECT_NE(layer1.find(">audio<"), std::string::npos);
  EXPECT_NE(layer1.find(">expert 3<"), std::string::npos);

  const std::string layer3 = svg_with_id(html, "heatmap-layer-3");
  EXPECT_EQ(cell_values(layer3), (std::vector<std::string>{"0.70", "0.10", "0.10", "0.10"}));
}

TEST(Report, HeatmapDarkestCellIsLargest) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string layer1 = svg_with_id(render_report(run.path()), "heatmap-layer-1");
  // 0.5 is the largest share of layer 1, so it gets the end colour of the scale.
  EXPECT_EQ(count_of(layer1, "fill=\"rgb(8,48,107)\""), 1u);
}

TEST(Report, RoutingExpertCountMismatchIsDataError) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("routing.json"),
             "{\"layers\": [{\"layer\": 2, \"modalities\": {\"image\": {\"top_choice_share\": [0.5, 0.5]},"
             " \"text\": {\"top_choice_share\": [0.2, 0.3, 0.5]}}}]}");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("routing.json"), std::string::npos) << message;
  EXPECT_NE(message.find("\"text\" has 3 experts"), std::string::npos) << message;
}

TEST(Report, EscapesNamesFromFiles) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"),
             "{\"step\": 1, \"loss\": {\"<b>&x\": 1.0}}\n{\"step\": 2, \"loss\": {\"<b>&x\": 0.5}}\n");
  write_file(run.file("routing.json"),
             "{\"layers\": [{\"layer\": 1, \"modalities\": {\"<i>\\\"q\": {\"top_choice_share\": [1.0]}}}]}");
  write_file(run.file("evals.jsonl"), "{\"step\": 2, \"metrics\": {\"<script>/top1\": 0.5}}\n");
  const std::string html = render_report(run.path());
  EXPECT_EQ(html.find("<b>&x"), std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;&amp;x"), std::string::npos);
  EXPECT_NE(svg_with_id(html, "chart-loss").find("data-series=\"&lt;b&gt;&amp;x\""), std::string::npos);
  EXPECT_EQ(html.find("<i>"), std::string::npos);
  EXPECT_NE(html.find("&lt;i&gt;&quot;q"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;/top1"), std::string::npos);
}

TEST(Report, PageIsSelfContained) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string html = render_report(run.path());
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
}

TEST(Report, MissingOptionalFilesSaySo) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  const std::string html = render_report(run.path());
  EXPECT_NE(html.find("evals.jsonl is missing from this run directory"), std::string::npos);
  EXPECT_NE(html.find("eval.json is missing from this run directory"), std::string::npos);
  EXPECT_NE(html.find("routing.json is missing from this run directory"), std::string::npos);
  EXPECT_NE(html.find("config.yaml is missing from this run directory"), std::string::npos);
  EXPECT_EQ(html.find("id=\"heatmap-layer-"), std::string::npos);
  EXPECT_EQ(html.find("id=\"chart-eval-"), std::string::npos);
}

TEST(Report, FullRunHasNoMissingSentence) {
  testing::ScratchDir run("report");
  write_full_run(run);
  EXPECT_EQ(render_report(run.path()).find("is missing from this run directory"), std::string::npos);
}

TEST(Report, SummaryShowsStepsAndFinalMetrics) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string html = render_report(run.path());
  EXPECT_NE(html.find("<h1>imp run report: " + fs::path(run.path()).filename().string() + "</h1>"),
            std::string::npos);
  EXPECT_NE(html.find("300 of 300 (100%)"), std::string::npos);
  EXPECT_NE(html.find("<td><code>fmnist/head_top1</code></td><td>0.8811</td>"), std::string::npos);
  EXPECT_NE(html.find("<td><code>train_seconds</code></td><td>548.6</td>"), std::string::npos);
  EXPECT_NE(html.find("0:00:30 (30.0 s)"), std::string::npos);
  EXPECT_NE(html.find("<td>51000</td>"), std::string::npos);  // median tokens/s
}

TEST(Report, LatestEvaluationWhenEvalJsonMissing) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("evals.jsonl"), kEvals);
  const std::string html = render_report(run.path());
  EXPECT_NE(html.find("eval.json is missing"), std::string::npos);
  EXPECT_NE(html.find("Latest evaluation (evals.jsonl, step 300)"), std::string::npos);
}

TEST(Report, EvalChartPerDatasetPrefix) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string html = render_report(run.path());
  const std::string fmnist = svg_with_id(html, "chart-eval-fmnist");
  const std::string video = svg_with_id(html, "chart-eval-fmnist-video");
  EXPECT_EQ(polyline_point_counts(fmnist), (std::vector<size_t>{2, 2}));
  EXPECT_NE(fmnist.find("data-series=\"head_top1\""), std::string::npos);
  EXPECT_EQ(polyline_point_counts(video), (std::vector<size_t>{2}));
  EXPECT_NE(video.find("data-series=\"item_zeroshot_top1\""), std::string::npos);
}

TEST(Report, SingleEvaluationIsTable) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("evals.jsonl"), "{\"step\": 300, \"metrics\": {\"fmnist/head_top1\": 0.8811}}\n");
  const std::string html = render_report(run.path());
  EXPECT_EQ(html.find("id=\"chart-eval-"), std::string::npos);
  const size_t table = html.find("id=\"table-evaluation\"");
  ASSERT_NE(table, std::string::npos);
  EXPECT_NE(html.find("<td><code>fmnist/head_top1</code></td><td>0.8811</td>", table), std::string::npos);
}

TEST(Report, ExpertLoadChartPerLayerAndModality) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"),
             "{\"step\": 1, \"expert_load\": {\"1\": {\"image\": [0.3, 0.2, 0.25, 0.25], \"video\": [0.1, 0.9]}}}\n"
             "{\"step\": 2, \"expert_load\": {\"1\": {\"image\": [0.4, 0.1, 0.25, 0.25], \"video\": [0.2, 0.8]}}}\n"
             "{\"step\": 3, \"expert_load\": {\"1\": {\"image\": [0.5, 0.0, 0.25, 0.25]}}}\n");
  const std::string html = render_report(run.path());
  EXPECT_EQ(polyline_point_counts(svg_with_id(html, "chart-expert-load-layer-1-image")),
            (std::vector<size_t>{3, 3, 3, 3}));
  EXPECT_EQ(polyline_point_counts(svg_with_id(html, "chart-expert-load-layer-1-video")),
            (std::vector<size_t>{2, 2}));
  EXPECT_NE(html.find("metrics.jsonl has no \"loss\" values"), std::string::npos);
}

TEST(Report, NoExpertLoadSaysSo) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  EXPECT_NE(render_report(run.path()).find("metrics.jsonl has no \"expert_load\" values"), std::string::npos);
}

TEST(Report, ConfigShownEscapedInDetails) {
  testing::ScratchDir run("report");
  write_full_run(run);
  const std::string html = render_report(run.path());
  EXPECT_NE(html.find("<details>\n<summary>config.yaml</summary>\n<pre>model:\n  preset: tiny # &lt;small&gt;\n</pre>"),
            std::string::npos);
}

TEST(Report, MalformedMetricsLineNamesLine) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), "{\"step\": 1, \"loss\": {\"a\": 1.0}}\n\n{\"step\": 2, \"loss\": {\"a\"\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find(run.file("metrics.jsonl") + " line 3"), std::string::npos) << message;
  EXPECT_NE(message.find("invalid JSON"), std::string::npos) << message;
}

TEST(Report, WrongTypeInMetricsNamesLine) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), "{\"step\": 1}\n{\"step\": 2, \"loss\": {\"a\": \"low\"}}\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("metrics.jsonl line 2"), std::string::npos) << message;
  EXPECT_NE(message.find("loss of task \"a\" must be a number"), std::string::npos) << message;
}

TEST(Report, MetricsLineWithoutStepIsDataError) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), "{\"step\": 1}\n{\"loss\": {\"a\": 1.0}}\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("metrics.jsonl line 2: missing \"step\""), std::string::npos) << message;
}

TEST(Report, MissingMetricsIsDataError) {
  testing::ScratchDir run("report");
  write_file(run.file("eval.json"), "{}");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("no metrics.jsonl"), std::string::npos) << message;
  EXPECT_NE(message.find("not a run directory"), std::string::npos) << message;
}

TEST(Report, EmptyMetricsIsDataError) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), "\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("has no records"), std::string::npos) << message;
}

TEST(Report, MissingRunDirectoryIsDataError) {
  testing::ScratchDir scratch("report");
  const std::string message = render_error(scratch.file("no_such_run"));
  EXPECT_NE(message.find("no_such_run"), std::string::npos) << message;
  EXPECT_NE(message.find("not found"), std::string::npos) << message;
}

TEST(Report, MalformedEvalsLineNamesLine) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("evals.jsonl"), "{\"step\": 1, \"metrics\": {}}\n{\"step\": 2, \"metrics\": [1]}\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("evals.jsonl line 2"), std::string::npos) << message;
}

TEST(Report, EvalJsonSyntaxErrorNamesLine) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), kMetrics);
  write_file(run.file("eval.json"), "{\n  \"a\": 1,\n  \"b\": ,\n  \"c\": 3\n}\n");
  const std::string message = render_error(run.path());
  EXPECT_NE(message.find("eval.json line 3"), std::string::npos) << message;
}

TEST(Report, WriteReportReplacesFile) {
  testing::ScratchDir run("report");
  write_full_run(run);
  write_file(run.file("report.html"), "old page");
  const std::string path = write_report(run.path());
  EXPECT_EQ(path, run.file("report.html"));
  EXPECT_EQ(read_file(path), render_report(run.path()));
  // Only the run files and the page: no temporary file left behind.
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(run.path())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
    ++files;
  }
  EXPECT_EQ(files, 6u);
}

TEST(Report, WriteReportFailureLeavesNoPage) {
  testing::ScratchDir run("report");
  write_file(run.file("metrics.jsonl"), "not json\n");
  EXPECT_THROW(write_report(run.path()), DataError);
  EXPECT_FALSE(fs::exists(run.file("report.html")));
}

}  // namespace
}  // namespace imp
