// Speech synthesis with eSpeak NG, in process, and an on-disk cache of the
// synthesised waveforms.
//
// libespeak-ng keeps its synthesis state in globals that no call resets (the
// pitch flutter phase, for one), so speaking the same text twice in one
// process gives different samples. Each synthesis therefore loads a fresh
// copy of the library with dlopen and unloads it afterwards, and gives the C
// library's rand(), which eSpeak NG uses for breath noise, a fixed seed. The
// output is then a function of the text, the SpeechParams and the eSpeak NG
// release alone. The reload adds about 4 ms per utterance (eSpeak NG 1.51 on
// one core of an AMD EPYC VM, where a 1.5 s sentence takes 1.4 ms to
// synthesise without it). The imp library never links libespeak-ng, because
// a linked copy would stay loaded.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace imp {

struct SpeechParams {
  std::string voice;  // "<language>+<variant>", e.g. "en-us+m3", from `espeak-ng --voices`
                      // and `espeak-ng --voices=variant`
  int rate = 175;     // words per minute, 80 to 450
  int pitch = 50;     // eSpeak NG base pitch, 0 to 100
};

// Mono audio, samples in [-1, 1).
struct Waveform {
  std::vector<float> samples;
  int sample_rate = 0;  // Hz
};

// Speaks UTF-8 `text` with eSpeak NG. The result depends only on the text,
// the parameters and the eSpeak NG release. It starts and ends with
// eSpeak NG's own short silences, which are kept. The sample rate is that of
// the eSpeak NG data (22050 Hz for 1.51). Calls from several threads are
// serialised. Throws DataError for an unknown voice, a rate or pitch out of
// range, or when libespeak-ng or its data cannot be loaded.
//
// NOTE: eSpeak NG sets the process-wide LC_CTYPE locale to C.UTF-8 while it
// works, and the previous one is restored afterwards, so another thread that
// reads LC_CTYPE at that moment sees C.UTF-8.
Waveform synthesize_speech(const std::string& text, const SpeechParams& params);

// Version string of the installed eSpeak NG, e.g. "1.51".
std::string espeak_ng_version();

// Synthesised utterances kept as files in one folder: one 16-bit PCM mono WAV
// per (text, voice, rate, pitch), named by a 64-bit hash of those, of the
// eSpeak NG version and of the file format version. A file whose header,
// length or checksum is wrong is synthesised again and replaced. Safe to use
// from several threads, and from several processes that share the folder.
class SpeechCache {
 public:
  // The folder is created when the first file is written.
  explicit SpeechCache(std::string directory);

  // Returns the utterance from its file, or synthesises it and writes the
  // file. The samples are the same either way. Throws DataError when the
  // file cannot be written, or as synthesize_speech does.
  Waveform get(const std::string& text, const SpeechParams& params);

  // The file that contains (or will contain) this utterance.
  std::string path_for(const std::string& text, const SpeechParams& params) const;

  const std::string& directory() const { return directory_; }
  int64_t synthesized() const;  // utterances synthesised by get(), including replaced files
  int64_t cache_hits() const;   // utterances read back from valid files

 private:
  std::string directory_;
  mutable std::mutex mutex_;  // guards the counters and warned_
  int64_t synthesized_ = 0;
  int64_t cache_hits_ = 0;
  bool warned_ = false;  // a warning about an invalid file has been printed
};

}  // namespace imp
