#include "imp/audio/speech.h"

#include <dlfcn.h>
#include <espeak-ng/espeak_ng.h>
#include <espeak-ng/speak_lib.h>
#include <sndfile.h>
#include <strings.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "imp/core/error.h"
#include "imp/core/random.h"

namespace imp {
namespace {

// The soname of libespeak-ng since eSpeak NG 1.49.
constexpr const char* kLibrary = "libespeak-ng.so.1";

// Raised whenever the cache file layout or the synthesis settings change, so
// that old files are not mistaken for current ones.
constexpr int kCacheFormatVersion = 1;

// Seed of rand() during synthesis. Any fixed value makes breath noise repeat.
constexpr unsigned kRandSeed = 1;

// Serialises every use of libespeak-ng, whose API keeps its state in globals.
std::mutex& espeak_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Samples collected by on_samples() during one synthesis, under espeak_mutex().
std::vector<int16_t>* g_collected = nullptr;

int on_samples(short* samples, int count, espeak_EVENT* /*events*/) {
  if (samples != nullptr && count > 0) g_collected->insert(g_collected->end(), samples, samples + count);
  return 0;  // continue synthesis
}

// 16-bit samples as eSpeak NG produces them and as the cache stores them.
struct Pcm {
  std::vector<int16_t> samples;
  int sample_rate = 0;
};

Waveform to_waveform(const Pcm& pcm) {
  Waveform waveform;
  waveform.sample_rate = pcm.sample_rate;
  waveform.samples.reserve(pcm.samples.size());
  for (int16_t sample : pcm.samples) waveform.samples.push_back(static_cast<float>(sample) / 32768.0f);
  return waveform;
}

// The entry points of one loaded copy of libespeak-ng.
struct EspeakApi {
  decltype(&espeak_Info) info;
  decltype(&espeak_ng_InitializePath) initialize_path;
  decltype(&espeak_ng_Initialize) initialize;
  decltype(&espeak_ng_InitializeOutput) initialize_output;
  decltype(&espeak_ng_ClearErrorContext) clear_error_context;
  decltype(&espeak_ng_GetStatusCodeMessage) status_code_message;
  decltype(&espeak_ng_GetSampleRate) sample_rate;
  decltype(&espeak_SetSynthCallback) set_synth_callback;
  decltype(&espeak_ListVoices) list_voices;
  decltype(&espeak_ng_SetVoiceByName) set_voice_by_name;
  decltype(&espeak_ng_SetParameter) set_parameter;
  decltype(&espeak_ng_Synthesize) synthesize;
  decltype(&espeak_ng_Synchronize) synchronize;
  decltype(&espeak_ng_Terminate) terminate;
};

// A freshly loaded libespeak-ng, unloaded on destruction so that its globals
// start from their initial values next time. Use under espeak_mutex().
//
// NOTE: espeak_ng_Terminate in eSpeak NG 1.51 leaves some voice data
// allocated, so each load leaks about 2.6 kB (measured over 2000 utterances),
// about 26 MB per 10,000 utterances synthesised in one process.
class LoadedEspeak {
 public:
  LoadedEspeak() {
    warn_if_already_loaded();
    handle_ = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
    IMP_REQUIRE(DataError, handle_ != nullptr, "failed to load ", kLibrary,
                " for speech synthesis: ", dlerror(), ". Install eSpeak NG (Debian package libespeak-ng1).");
    api_.info = symbol<decltype(api_.info)>("espeak_Info");
    api_.initialize_path = symbol<decltype(api_.initialize_path)>("espeak_ng_InitializePath");
    api_.initialize = symbol<decltype(api_.initialize)>("espeak_ng_Initialize");
    api_.initialize_output = symbol<decltype(api_.initialize_output)>("espeak_ng_InitializeOutput");
    api_.clear_error_context = symbol<decltype(api_.clear_error_context)>("espeak_ng_ClearErrorContext");
    api_.status_code_message = symbol<decltype(api_.status_code_message)>("espeak_ng_GetStatusCodeMessage");
    api_.sample_rate = symbol<decltype(api_.sample_rate)>("espeak_ng_GetSampleRate");
    api_.set_synth_callback = symbol<decltype(api_.set_synth_callback)>("espeak_SetSynthCallback");
    api_.list_voices = symbol<decltype(api_.list_voices)>("espeak_ListVoices");
    api_.set_voice_by_name = symbol<decltype(api_.set_voice_by_name)>("espeak_ng_SetVoiceByName");
    api_.set_parameter = symbol<decltype(api_.set_parameter)>("espeak_ng_SetParameter");
    api_.synthesize = symbol<decltype(api_.synthesize)>("espeak_ng_Synthesize");
    api_.synchronize = symbol<decltype(api_.synchronize)>("espeak_ng_Synchronize");
    api_.terminate = symbol<decltype(api_.terminate)>("espeak_ng_Terminate");
  }

  ~LoadedEspeak() {
    if (initialized_) api_.terminate();
    if (handle_ != nullptr) dlclose(handle_);
  }

  LoadedEspeak(const LoadedEspeak&) = delete;
  LoadedEspeak& operator=(const LoadedEspeak&) = delete;

  const EspeakApi& api() const { return api_; }

  // Loads the phoneme data and voices and selects synchronous output to
  // on_samples().
  void initialize() {
    api_.initialize_path(nullptr);  // ESPEAK_DATA_PATH, or the data folder built in
    espeak_ng_ERROR_CONTEXT context = nullptr;
    const espeak_ng_STATUS status = api_.initialize(&context);
    api_.clear_error_context(&context);
    IMP_REQUIRE(DataError, status == ENS_OK, "eSpeak NG failed to initialise: ", message(status),
                ". Install its voice data (Debian package espeak-ng-data), or set ESPEAK_DATA_PATH to the ",
                "espeak-ng-data folder.");
    initialized_ = true;
    check(api_.initialize_output(ENOUTPUT_MODE_SYNCHRONOUS, 0, nullptr), "select synchronous output");
    api_.set_synth_callback(on_samples);
  }

  // Throws DataError naming `action` when `status` is not ENS_OK.
  void check(espeak_ng_STATUS status, const std::string& action) const {
    IMP_REQUIRE(DataError, status == ENS_OK, "eSpeak NG failed to ", action, ": ", message(status));
  }

  std::string message(espeak_ng_STATUS status) const {
    char buffer[256] = {};
    api_.status_code_message(status, buffer, sizeof(buffer));
    return buffer;
  }

 private:
  template <typename Function>
  Function symbol(const char* name) {
    void* address = dlsym(handle_, name);
    if (address == nullptr) {
      dlclose(handle_);
      handle_ = nullptr;
      throw DataError(str_cat(kLibrary, " is missing the function ", name,
                              ". Speech synthesis needs eSpeak NG 1.49.2 or later."));
    }
    return reinterpret_cast<Function>(address);
  }

  // A copy that someone else keeps loaded is not reset by dlclose, and then
  // the samples depend on what was spoken before.
  static void warn_if_already_loaded() {
    void* existing = dlopen(kLibrary, RTLD_NOW | RTLD_NOLOAD);
    if (existing == nullptr) return;
    dlclose(existing);
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      std::cerr << "warning: " << kLibrary << " is already loaded in this process (linked by another "
                << "library?), so speech synthesis cannot reset it and its output may vary between calls\n";
    }
  }

  void* handle_ = nullptr;
  EspeakApi api_{};
  bool initialized_ = false;
};

// Restores the LC_CTYPE locale, which espeak_ng_Initialize changes, on scope exit.
class SavedCtypeLocale {
 public:
  SavedCtypeLocale() {
    const char* current = std::setlocale(LC_CTYPE, nullptr);
    if (current != nullptr) saved_ = current;
  }
  ~SavedCtypeLocale() {
    if (saved_) std::setlocale(LC_CTYPE, saved_->c_str());
  }
  SavedCtypeLocale(const SavedCtypeLocale&) = delete;
  SavedCtypeLocale& operator=(const SavedCtypeLocale&) = delete;

 private:
  std::optional<std::string> saved_;
};

// Gives rand() a private state seeded with kRandSeed, and puts the caller's
// state back on scope exit. glibc's rand() draws from the state of random(),
// which initstate() and setstate() switch.
class SeededRand {
 public:
  SeededRand() { previous_ = initstate(kRandSeed, state_, sizeof(state_)); }
  ~SeededRand() { setstate(previous_); }
  SeededRand(const SeededRand&) = delete;
  SeededRand& operator=(const SeededRand&) = delete;

 private:
  char state_[128];  // the size of glibc's default state
  char* previous_ = nullptr;
};

// The voice file of a variant name or number as eSpeak NG resolves them:
// "+m3" is "!v/m3", and "+3" means male variant 3 ("!v/m3"), "+13" female 3.
std::string variant_identifier(const std::string& variant) {
  const bool numeric = !variant.empty() && std::isdigit(static_cast<unsigned char>(variant[0]));
  if (!numeric) return "!v/" + variant;
  const int number = std::atoi(variant.c_str());
  return number < 10 ? str_cat("!v/m", number) : str_cat("!v/f", number - 10);
}

std::string unknown_voice_message(const std::string& voice, const std::string& reason) {
  return str_cat("unknown eSpeak NG voice '", voice, "': ", reason,
                 ". A voice is \"<language>+<variant>\", e.g. \"en-us+m3\"; pick the language from ",
                 "`espeak-ng --voices` and the variant from `espeak-ng --voices=variant`.");
}

// Whether an eSpeak NG language list names `language`, ignoring case. The
// list is a sequence of (priority byte, NUL-terminated name) ending with a
// zero byte.
bool lists_language(const char* languages, const std::string& language) {
  for (const char* entry = languages; entry != nullptr && *entry != 0; entry += std::strlen(entry + 1) + 2) {
    if (strcasecmp(entry + 1, language.c_str()) == 0) return true;
  }
  return false;
}

// The voice file that eSpeak NG ranks first for `language`, e.g. "gmw/en" for
// "en-gb", or "" when no voice lists the language. MBROLA voices are skipped
// because they need the separate mbrola program.
std::string voice_file_for_language(const LoadedEspeak& espeak, const std::string& language) {
  espeak_VOICE selector{};
  selector.languages = language.c_str();
  for (const espeak_VOICE* const* entry = espeak.api().list_voices(&selector); entry != nullptr && *entry;
       ++entry) {
    const espeak_VOICE& candidate = **entry;
    if (candidate.identifier == nullptr || std::strncmp(candidate.identifier, "mb/", 3) == 0) continue;
    if (lists_language(candidate.languages, language)) return candidate.identifier;
  }
  return "";
}

bool variant_exists(const LoadedEspeak& espeak, const std::string& variant) {
  const std::string identifier = variant_identifier(variant);
  espeak_VOICE selector{};
  selector.languages = "variant";
  for (const espeak_VOICE* const* entry = espeak.api().list_voices(&selector); entry != nullptr && *entry;
       ++entry) {
    if ((*entry)->identifier != nullptr && identifier == (*entry)->identifier) return true;
  }
  return false;
}

// The name to give espeak_ng_SetVoiceByName for a "<language>+<variant>"
// voice. eSpeak NG 1.51 finds "en-us" by its file name (gmw/en-US) but not
// "en-gb" (gmw/en), and `espeak-ng -v en-gb+m3` then falls back to a language
// lookup that drops the variant. So the language is resolved to its voice
// file here and the variant is attached to that. An unknown variant is
// rejected here, because eSpeak NG ignores it without an error.
std::string resolve_voice(const LoadedEspeak& espeak, const std::string& voice) {
  IMP_REQUIRE(DataError, !voice.empty(), unknown_voice_message(voice, "the name is empty"));
  const size_t plus = voice.find('+');
  const std::string language = voice.substr(0, plus);
  std::string name = voice_file_for_language(espeak, language);
  if (name.empty()) name = language;  // perhaps a voice name or file, e.g. "gmw/en"

  if (plus != std::string::npos) {
    const std::string variant = voice.substr(plus + 1);
    IMP_REQUIRE(DataError, !variant.empty() && variant_exists(espeak, variant),
                unknown_voice_message(voice, str_cat("variant '", variant, "' not found")));
    name += "+" + variant;
  }
  return name;
}

void select_voice(const LoadedEspeak& espeak, const std::string& voice) {
  // Each voice list in resolve_voice() reads every voice file, about 3 ms
  // for espeak-ng-data 1.51 on one core, twice the time it takes to
  // synthesise a short sentence. So resolved names are kept for the life of
  // the process. Guarded by espeak_mutex().
  static std::map<std::string, std::string> resolved;
  auto found = resolved.find(voice);
  if (found == resolved.end()) found = resolved.emplace(voice, resolve_voice(espeak, voice)).first;

  const espeak_ng_STATUS status = espeak.api().set_voice_by_name(found->second.c_str());
  IMP_REQUIRE(
      DataError, status != ENS_VOICE_NOT_FOUND,
      unknown_voice_message(voice, str_cat("language '", voice.substr(0, voice.find('+')), "' not found")));
  espeak.check(status, str_cat("select voice '", voice, "'"));
}

Pcm synthesize_pcm(const std::string& text, const SpeechParams& params) {
  IMP_REQUIRE(DataError, params.rate >= espeakRATE_MINIMUM && params.rate <= espeakRATE_MAXIMUM,
              "speech rate ", params.rate, " words per minute is outside eSpeak NG's range ",
              espeakRATE_MINIMUM, " to ", espeakRATE_MAXIMUM);
  IMP_REQUIRE(DataError, params.pitch >= 0 && params.pitch <= 100, "speech pitch ", params.pitch,
              " is outside eSpeak NG's range 0 to 100");

  std::lock_guard<std::mutex> lock(espeak_mutex());
  const SavedCtypeLocale saved_locale;
  const SeededRand seeded_rand;
  LoadedEspeak espeak;
  espeak.initialize();
  select_voice(espeak, params.voice);
  espeak.check(espeak.api().set_parameter(espeakRATE, params.rate, 0), "set the rate");
  espeak.check(espeak.api().set_parameter(espeakPITCH, params.pitch, 0), "set the pitch");

  Pcm pcm;
  pcm.sample_rate = espeak.api().sample_rate();
  g_collected = &pcm.samples;
  const espeak_ng_STATUS status = espeak.api().synthesize(text.c_str(), text.size() + 1, 0, POS_CHARACTER, 0,
                                                          espeakCHARS_UTF8, nullptr, nullptr);
  const espeak_ng_STATUS sync_status = status == ENS_OK ? espeak.api().synchronize() : status;
  g_collected = nullptr;
  espeak.check(sync_status, str_cat("synthesise \"", text, "\""));
  return pcm;
}

// --- Cache files -----------------------------------------------------------

// Checksum of the samples, stored in the WAV comment to catch truncated or
// damaged files, which libsndfile reads without complaint.
uint64_t checksum(const std::vector<int16_t>& samples) {
  const std::string bytes(reinterpret_cast<const char*>(samples.data()), samples.size() * sizeof(int16_t));
  return mix64(hash_name(bytes));
}

std::string hex64(uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(value));
  return buffer;
}

std::string file_comment(const Pcm& pcm) {
  return str_cat("imp speech cache ", kCacheFormatVersion, ", ", pcm.samples.size(), " samples, checksum ",
                 hex64(checksum(pcm.samples)));
}

// Closes a libsndfile handle on scope exit.
struct SndfileCloser {
  void operator()(SNDFILE* file) const { sf_close(file); }
};
using SndfilePtr = std::unique_ptr<SNDFILE, SndfileCloser>;

// Reads a cache file. Returns std::nullopt and sets `problem` when the file
// is unreadable, not 16-bit mono WAV, or does not match its checksum.
std::optional<Pcm> read_cache_file(const std::string& path, std::string& problem) {
  SF_INFO info{};
  SndfilePtr file(sf_open(path.c_str(), SFM_READ, &info));
  if (!file) {
    problem = sf_strerror(nullptr);
    return std::nullopt;
  }
  if (info.channels != 1 || info.format != (SF_FORMAT_WAV | SF_FORMAT_PCM_16) || info.samplerate <= 0) {
    problem = "not a 16-bit PCM mono WAV file";
    return std::nullopt;
  }
  Pcm pcm;
  pcm.sample_rate = info.samplerate;
  pcm.samples.resize(static_cast<size_t>(info.frames));
  const sf_count_t read = sf_readf_short(file.get(), pcm.samples.data(), info.frames);
  if (read != info.frames) {
    problem = str_cat("only ", read, " of ", info.frames, " samples could be read");
    return std::nullopt;
  }
  const char* comment = sf_get_string(file.get(), SF_STR_COMMENT);
  if (comment == nullptr || file_comment(pcm) != comment) {
    problem = "the samples do not match the length and checksum written with them";
    return std::nullopt;
  }
  return pcm;
}

// Writes `pcm` to `path` through a temporary file in the same folder and a
// rename, so that no reader ever sees a partly written file under `path`.
void write_cache_file(const std::string& path, const Pcm& pcm) {
  static std::atomic<uint64_t> counter{0};
  const std::string temporary = str_cat(path, ".tmp.", getpid(), ".", counter++);

  SF_INFO info{};
  info.samplerate = pcm.sample_rate;
  info.channels = 1;
  info.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
  SNDFILE* file = sf_open(temporary.c_str(), SFM_WRITE, &info);
  IMP_REQUIRE(DataError, file != nullptr, "failed to create speech cache file ", temporary, ": ",
              sf_strerror(nullptr));
  const std::string comment = file_comment(pcm);
  const int comment_error = sf_set_string(file, SF_STR_COMMENT, comment.c_str());
  const auto frames = static_cast<sf_count_t>(pcm.samples.size());
  const sf_count_t written = sf_writef_short(file, pcm.samples.data(), frames);
  const std::string write_error = sf_strerror(file);
  const int close_error = sf_close(file);

  std::error_code error;
  if (comment_error != 0 || written != frames || close_error != 0) {
    std::filesystem::remove(temporary, error);
    throw DataError(str_cat("failed to write speech cache file ", temporary, ": ", write_error));
  }
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw DataError(str_cat("failed to rename ", temporary, " to ", path, ": ", error.message()));
  }
}

}  // namespace

Waveform synthesize_speech(const std::string& text, const SpeechParams& params) {
  return to_waveform(synthesize_pcm(text, params));
}

std::string espeak_ng_version() {
  static const std::string version = [] {
    std::lock_guard<std::mutex> lock(espeak_mutex());
    const LoadedEspeak espeak;
    return std::string(espeak.api().info(nullptr));
  }();
  return version;
}

SpeechCache::SpeechCache(std::string directory) : directory_(std::move(directory)) {}

std::string SpeechCache::path_for(const std::string& text, const SpeechParams& params) const {
  // Length prefixes keep the fields apart whatever characters they contain.
  const std::string version = espeak_ng_version();
  const std::string fields =
      str_cat("imp speech cache ", kCacheFormatVersion, "\neSpeak NG ", version.size(), ":", version,
              "\nvoice ", params.voice.size(), ":", params.voice, "\nrate ", params.rate, "\npitch ",
              params.pitch, "\ntext ", text.size(), ":", text);
  return (std::filesystem::path(directory_) / (hex64(mix64(hash_name(fields))) + ".wav")).string();
}

Waveform SpeechCache::get(const std::string& text, const SpeechParams& params) {
  const std::string path = path_for(text, params);

  std::error_code error;
  if (std::filesystem::exists(path, error)) {
    std::string problem;
    if (std::optional<Pcm> cached = read_cache_file(path, problem)) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++cache_hits_;
      return to_waveform(*cached);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (!warned_) {
      warned_ = true;
      std::cerr << "warning: speech cache file " << path << " is invalid (" << problem
                << "); synthesising it again. Further invalid files in " << directory_
                << " are replaced without a warning.\n";
    }
  }

  const Pcm pcm = synthesize_pcm(text, params);
  std::filesystem::create_directories(directory_, error);
  IMP_REQUIRE(DataError, !error, "failed to create the speech cache folder ", directory_, ": ",
              error.message());
  write_cache_file(path, pcm);
  std::lock_guard<std::mutex> lock(mutex_);
  ++synthesized_;
  return to_waveform(pcm);
}

int64_t SpeechCache::synthesized() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return synthesized_;
}

int64_t SpeechCache::cache_hits() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cache_hits_;
}

}  // namespace imp
