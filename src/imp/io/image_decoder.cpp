// Image decoding with OpenCV plus the header parsing, alpha compositing,
// bit-depth conversion and EXIF orientation that OpenCV's IMREAD_UNCHANGED
// leaves to the caller, and the crop/resize augmentation. See image_decoder.h
// for the contract.
#include "imp/io/image_decoder.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <stdexcept>

#include "imp/core/error.h"
#include "imp/core/random.h"

namespace imp {
namespace {

// ---------------------------------------------------------------------------
// Byte access. Every caller checks the bounds before reading.

uint16_t read_be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint16_t read_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t read_le24(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16);
}
uint32_t read_le32(const uint8_t* p) { return read_le24(p) | (uint32_t{p[3]} << 24); }

bool starts_with(const uint8_t* data, size_t size, const char* prefix, size_t length) {
  return size >= length && std::memcmp(data, prefix, length) == 0;
}

// ---------------------------------------------------------------------------
// Errors. Each message names the sample and says what to do next.

[[noreturn]] void throw_truncated(const std::string& what, const char* format, const std::string& detail) {
  throw DecodeError("image: truncated",
                    str_cat(what, ": the ", format, " image is truncated (", detail,
                            "); the file was probably cut off while copying or "
                            "downloading, so fetch it again or remove it from the data set"));
}

[[noreturn]] void throw_corrupt(const std::string& what, const char* format, const std::string& detail) {
  throw DecodeError("image: corrupt", str_cat(what, ": the ", format, " image is corrupt (", detail,
                                              "); re-encode the file or remove it from the data set"));
}

[[noreturn]] void throw_unsupported(const std::string& what, const char* format) {
  throw DecodeError(
      "image: unsupported format",
      str_cat(what, ": ", format, " images are not supported; convert the file to JPEG, PNG or WebP"));
}

// ---------------------------------------------------------------------------
// EXIF orientation.

// Returns the orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF
// block, or 1 (no transform) when the block is missing, malformed or contains
// a value outside 1..8. A broken EXIF block does not make the image unreadable,
// so it is ignored rather than rejected.
int exif_orientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  const bool little_endian = tiff[0] == 'I' && tiff[1] == 'I';
  const bool big_endian = tiff[0] == 'M' && tiff[1] == 'M';
  if (!little_endian && !big_endian) return 1;
  auto read16 = [&](size_t offset) {
    return little_endian ? read_le16(tiff + offset) : read_be16(tiff + offset);
  };
  auto read32 = [&](size_t offset) {
    return little_endian ? read_le32(tiff + offset) : read_be32(tiff + offset);
  };
  if (read16(2) != 42) return 1;

  const size_t ifd = read32(4);
  if (ifd > size || size - ifd < 2) return 1;
  const size_t entries = read16(ifd);
  for (size_t i = 0; i < entries; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (entry + 12 > size) return 1;
    const int tag = read16(entry);
    const int type = read16(entry + 2);
    const uint32_t count = read32(entry + 4);
    constexpr int kOrientationTag = 0x0112;
    constexpr int kTypeShort = 3;
    if (tag == kOrientationTag && type == kTypeShort && count >= 1) {
      // A SHORT value sits in the first two bytes of the 4-byte value field.
      const int value = read16(entry + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

// Returns the orientation from an EXIF block that may start with the JPEG
// APP1 identifier "Exif\0\0" (WebP writers differ on whether they keep it).
int exif_orientation_after_optional_prefix(const uint8_t* block, size_t size) {
  if (starts_with(block, size, "Exif\0\0", 6)) return exif_orientation(block + 6, size - 6);
  return exif_orientation(block, size);
}

// Rotates and mirrors `image` so that it displays upright, as the EXIF
// orientation values 1..8 define: the value names where the stored first row
// and first column belong (for example 6: the first row is the right side).
cv::Mat apply_orientation(const cv::Mat& image, int orientation) {
  cv::Mat result;
  switch (orientation) {
    case 2:  // mirrored left-right
      cv::flip(image, result, 1);
      return result;
    case 3:  // upside down
      cv::rotate(image, result, cv::ROTATE_180);
      return result;
    case 4:  // mirrored top-bottom
      cv::flip(image, result, 0);
      return result;
    case 5:  // mirrored along the main diagonal
      cv::transpose(image, result);
      return result;
    case 6:  // needs a quarter turn clockwise
      cv::rotate(image, result, cv::ROTATE_90_CLOCKWISE);
      return result;
    case 7: {  // mirrored along the anti-diagonal
      cv::Mat transposed;
      cv::transpose(image, transposed);
      cv::flip(transposed, result, -1);
      return result;
    }
    case 8:  // needs a quarter turn counter-clockwise
      cv::rotate(image, result, cv::ROTATE_90_COUNTERCLOCKWISE);
      return result;
    default:
      return image;
  }
}

// ---------------------------------------------------------------------------
// Header parsing. Reading the size from the header lets decode_image reject
// huge images before OpenCV allocates the pixel buffer, and walking the whole
// container structure finds a cut-off file before libjpeg fills the missing
// part with grey.

enum class ImageFormat { kJpeg, kPng, kWebp };

const char* format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg:
      return "JPEG";
    case ImageFormat::kPng:
      return "PNG";
    case ImageFormat::kWebp:
      return "WebP";
  }
  return "image";
}

struct ImageHeader {
  ImageFormat format = ImageFormat::kJpeg;
  int64_t height = 0;  // as stored, before the orientation is applied
  int64_t width = 0;
  int orientation = 1;  // EXIF orientation, 1..8
  // PNG grey images (colour type 0) can mark one grey value as transparent
  // with a tRNS chunk. OpenCV drops that chunk for grey images, so
  // decode_image applies it. The value is in the file's bit depth.
  bool has_grey_key = false;
  int grey_key = 0;
  int png_bit_depth = 8;
};

// How much of the file the header parsers check.
enum class ParseDepth {
  kHeaderOnly,  // stop once the size and orientation are known
  kWholeFile,   // also require the format's end marker, so that a truncated file is rejected
};

bool is_jpeg_sof(int marker) {
  // Markers C0..CF are the frame headers SOF0..SOF15, except C4 (DHT),
  // C8 (JPG, reserved) and CC (DAC).
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

// Skips the entropy-coded data that follows a JPEG SOS header and returns the
// position of the next marker. Inside that data a 0xFF byte is followed by
// 0x00 (a stuffed byte), a restart marker RST0..RST7, or fill bytes, so the
// first other 0xFF xx pair is the next real marker.
size_t skip_entropy_coded_data(const uint8_t* data, size_t size, size_t pos, const std::string& what) {
  while (true) {
    const void* found = pos < size ? std::memchr(data + pos, 0xFF, size - pos) : nullptr;
    if (found == nullptr) throw_truncated(what, "JPEG", "the compressed data has no end-of-image marker");
    const size_t ff = static_cast<size_t>(static_cast<const uint8_t*>(found) - data);
    if (ff + 1 >= size) throw_truncated(what, "JPEG", "the compressed data has no end-of-image marker");
    const int next = data[ff + 1];
    if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
      pos = ff + 2;
    } else if (next == 0xFF) {
      pos = ff + 1;
    } else {
      return ff;
    }
  }
}

ImageHeader parse_jpeg(const uint8_t* data, size_t size, ParseDepth depth, const std::string& what) {
  ImageHeader header;
  header.format = ImageFormat::kJpeg;
  bool have_frame = false;
  bool have_exif = false;
  size_t pos = 2;  // after SOI

  while (true) {
    if (pos >= size && depth == ParseDepth::kHeaderOnly && have_frame) return header;
    if (pos >= size) throw_truncated(what, "JPEG", "the data ends between two segments");
    if (data[pos] != 0xFF) throw_corrupt(what, "JPEG", str_cat("no marker at byte ", pos));
    // Any number of 0xFF fill bytes may precede a marker code.
    while (pos < size && data[pos] == 0xFF) ++pos;
    if (pos >= size) throw_truncated(what, "JPEG", "the data ends inside a marker");
    const int marker = data[pos++];

    // EOI ends the image. TEM (01) and RST0..RST7 (D0..D7) have no length field.
    if (marker == 0xD9) break;
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (marker == 0xD8) throw_corrupt(what, "JPEG", "a second start-of-image marker");

    if (size - pos < 2) throw_truncated(what, "JPEG", "the data ends inside a segment length");
    const size_t length = read_be16(data + pos);
    if (length < 2) throw_corrupt(what, "JPEG", str_cat("a segment length of ", length));
    if (size - pos < length) throw_truncated(what, "JPEG", "the data ends inside a segment");
    const uint8_t* body = data + pos + 2;
    const size_t body_size = length - 2;

    if (is_jpeg_sof(marker) && !have_frame) {
      if (body_size < 6) throw_corrupt(what, "JPEG", "a frame header shorter than 6 bytes");
      header.height = read_be16(body + 1);
      header.width = read_be16(body + 3);
      // Height 0 means the height follows in a DNL marker after the first
      // scan, which libjpeg does not support.
      if (header.height == 0 || header.width == 0) {
        throw_corrupt(what, "JPEG",
                      str_cat("the frame header gives a size of ", header.width, "x", header.height));
      }
      have_frame = true;
    } else if (marker == 0xE1 && !have_exif && starts_with(body, body_size, "Exif\0\0", 6)) {
      header.orientation = exif_orientation(body + 6, body_size - 6);
      have_exif = true;
    }
    pos += length;

    if (marker == 0xDA) {  // SOS: a scan, then entropy-coded data
      if (!have_frame) throw_corrupt(what, "JPEG", "a scan before the frame header");
      if (depth == ParseDepth::kHeaderOnly) return header;
      pos = skip_entropy_coded_data(data, size, pos, what);
    }
  }
  if (!have_frame) throw_corrupt(what, "JPEG", "the end-of-image marker comes before any frame header");
  return header;
}

ImageHeader parse_png(const uint8_t* data, size_t size, ParseDepth depth, const std::string& what) {
  ImageHeader header;
  header.format = ImageFormat::kPng;
  int colour_type = -1;
  size_t pos = 8;  // after the signature

  while (true) {
    if (size - pos < 8) {
      if (depth == ParseDepth::kHeaderOnly && colour_type >= 0) return header;
      throw_truncated(what, "PNG", "the data ends before the IEND chunk");
    }
    const uint32_t length = read_be32(data + pos);
    const uint8_t* type = data + pos + 4;
    if (length > 0x7FFFFFFFu) throw_corrupt(what, "PNG", str_cat("a chunk length of ", length));
    // Chunk: length, type, `length` bytes of data, CRC.
    if (size - pos - 8 < size_t{length} + 4) {
      if (depth == ParseDepth::kHeaderOnly && colour_type >= 0) return header;
      throw_truncated(what, "PNG", "the data ends inside a chunk");
    }
    const uint8_t* body = data + pos + 8;
    const bool first_chunk = colour_type < 0;

    if (std::memcmp(type, "IHDR", 4) == 0 && first_chunk) {
      if (length != 13) throw_corrupt(what, "PNG", str_cat("an IHDR chunk of ", length, " bytes"));
      header.width = read_be32(body);
      header.height = read_be32(body + 4);
      header.png_bit_depth = body[8];
      colour_type = body[9];
      if (header.width == 0 || header.height == 0 || header.width > 0x7FFFFFFF ||
          header.height > 0x7FFFFFFF) {
        throw_corrupt(what, "PNG",
                      str_cat("the IHDR chunk gives a size of ", header.width, "x", header.height));
      }
    } else if (first_chunk) {
      throw_corrupt(what, "PNG", "the first chunk is not IHDR");
    } else if (std::memcmp(type, "eXIf", 4) == 0) {
      header.orientation = exif_orientation(body, length);
    } else if (std::memcmp(type, "tRNS", 4) == 0 && colour_type == 0 && length >= 2) {
      header.has_grey_key = true;
      header.grey_key = read_be16(body);
    } else if (std::memcmp(type, "IEND", 4) == 0) {
      return header;
    }
    pos += 12 + size_t{length};
  }
}

// Size of a lossy VP8 key frame, from its frame header.
void parse_vp8_frame(const uint8_t* body, size_t body_size, ImageHeader& header, const std::string& what) {
  // 3-byte frame tag, the start code 9D 01 2A, then 14-bit width and height.
  // The top two bits of each 16-bit field are an upscaling hint, not part of
  // the size.
  if (body_size < 10) throw_corrupt(what, "WebP", "a VP8 chunk shorter than its frame header");
  if ((body[0] & 1) != 0) throw_corrupt(what, "WebP", "the VP8 frame is not a key frame");
  if (body[3] != 0x9D || body[4] != 0x01 || body[5] != 0x2A) throw_corrupt(what, "WebP", "no VP8 start code");
  header.width = read_le16(body + 6) & 0x3FFF;
  header.height = read_le16(body + 8) & 0x3FFF;
}

// Size of a lossless VP8L image, from its 5-byte header.
void parse_vp8l_frame(const uint8_t* body, size_t body_size, ImageHeader& header, const std::string& what) {
  // Signature byte 0x2F, then width-1 and height-1 as 14-bit fields, least
  // significant bit first.
  if (body_size < 5 || body[0] != 0x2F) throw_corrupt(what, "WebP", "no VP8L signature");
  const uint32_t bits = read_le32(body + 1);
  header.width = (bits & 0x3FFF) + 1;
  header.height = ((bits >> 14) & 0x3FFF) + 1;
}

ImageHeader parse_webp(const uint8_t* data, size_t size, ParseDepth depth, const std::string& what) {
  ImageHeader header;
  header.format = ImageFormat::kWebp;
  // RIFF header: "RIFF", the size of everything after these 8 bytes, "WEBP".
  const uint64_t riff_end = uint64_t{read_le32(data + 4)} + 8;
  if (riff_end < 12) throw_corrupt(what, "WebP", "the RIFF size is smaller than its header");
  if (depth == ParseDepth::kWholeFile && riff_end > size) {
    throw_truncated(what, "WebP",
                    str_cat("the RIFF header gives ", riff_end, " bytes but the data has ", size));
  }
  const size_t end = static_cast<size_t>(std::min<uint64_t>(riff_end, size));

  bool have_size = false;
  bool extended = false;
  size_t pos = 12;
  while (end - pos >= 8) {
    const uint8_t* type = data + pos;
    const uint32_t length = read_le32(data + pos + 4);
    // A header-only parse needs just the first bytes of the image chunk.
    const size_t available = std::min<size_t>(length, end - pos - 8);
    if (available < length && depth == ParseDepth::kWholeFile) {
      throw_truncated(what, "WebP", "the data ends inside a chunk");
    }
    const uint8_t* body = data + pos + 8;

    if (pos == 12 && std::memcmp(type, "VP8X", 4) == 0) {
      // Extended format: flags, 3 reserved bytes, canvas width-1 and
      // height-1 as 24-bit fields. The other chunks follow.
      if (available < 10) throw_corrupt(what, "WebP", "a VP8X chunk shorter than 10 bytes");
      constexpr uint8_t kAnimationFlag = 0x02;
      if ((body[0] & kAnimationFlag) != 0) throw_unsupported(what, "animated WebP");
      header.width = int64_t{read_le24(body + 4)} + 1;
      header.height = int64_t{read_le24(body + 7)} + 1;
      extended = true;
      have_size = true;
    } else if (pos == 12 && std::memcmp(type, "VP8 ", 4) == 0) {
      parse_vp8_frame(body, available, header, what);
      have_size = true;
    } else if (pos == 12 && std::memcmp(type, "VP8L", 4) == 0) {
      parse_vp8l_frame(body, available, header, what);
      have_size = true;
    } else if (pos == 12) {
      throw_corrupt(what, "WebP", "the first chunk is not VP8, VP8L or VP8X");
    } else if (extended && std::memcmp(type, "EXIF", 4) == 0) {
      header.orientation = exif_orientation_after_optional_prefix(body, available);
    }
    // Chunks are padded to an even length.
    pos += 8 + size_t{length} + (length & 1);
    if (pos > end) break;
    if (!extended && depth == ParseDepth::kHeaderOnly) break;
  }
  if (!have_size) throw_truncated(what, "WebP", "the data ends before the image header");
  if (header.width == 0 || header.height == 0) {
    throw_corrupt(what, "WebP", str_cat("the header gives a size of ", header.width, "x", header.height));
  }
  return header;
}

// Identifies the format from its signature and parses its header, or throws
// DecodeError for empty, unknown and unsupported input.
ImageHeader parse_header(const uint8_t* data, size_t size, ParseDepth depth, const std::string& what) {
  if (size == 0) throw DecodeError("image: empty", str_cat(what, ": the image file is empty (0 bytes)"));
  if (data == nullptr)
    throw std::invalid_argument(str_cat(what, ": image data is null but its size is ", size));

  if (starts_with(data, size, "\xFF\xD8\xFF", 3)) return parse_jpeg(data, size, depth, what);
  if (starts_with(data, size, "\x89PNG\r\n\x1A\n", 8)) return parse_png(data, size, depth, what);
  if (size >= 12 && starts_with(data, size, "RIFF", 4) && std::memcmp(data + 8, "WEBP", 4) == 0) {
    return parse_webp(data, size, depth, what);
  }

  if (starts_with(data, size, "GIF8", 4)) throw_unsupported(what, "GIF");
  if (starts_with(data, size, "BM", 2)) throw_unsupported(what, "BMP");
  if (starts_with(data, size, "II*\0", 4) || starts_with(data, size, "MM\0*", 4))
    throw_unsupported(what, "TIFF");
  if (size >= 12 && std::memcmp(data + 4, "ftyp", 4) == 0) throw_unsupported(what, "HEIF/AVIF");
  throw DecodeError("image: unknown format",
                    str_cat(what,
                            ": not a JPEG, PNG or WebP image (the first bytes match no known signature); "
                            "check that the file is an image and not, for example, an HTML error page"));
}

void check_pixel_limit(const ImageHeader& header, int64_t max_pixels, const std::string& what) {
  // Both sides are below 2^31 after parsing, so the product fits in int64_t.
  const int64_t pixels = header.width * header.height;
  if (pixels > max_pixels) {
    throw DecodeError("image: too large",
                      str_cat(what, ": the ", format_name(header.format), " image is ", header.width, "x",
                              header.height, " (", pixels, " pixels), more than the limit of ", max_pixels,
                              " pixels; downscale the file or raise the image pixel limit"));
  }
}

// ---------------------------------------------------------------------------
// Pixel conversion.

// Sets the pixels equal to the PNG grey colour key to full transparency by
// adding an alpha channel. `grey` is OpenCV's single-channel result, in which
// libpng has expanded 1-, 2- and 4-bit samples to 8 bits.
cv::Mat apply_grey_key(const cv::Mat& grey, const ImageHeader& header) {
  int key = header.grey_key;
  if (header.png_bit_depth < 8) key = key * 255 / ((1 << header.png_bit_depth) - 1);
  const cv::Mat opaque = grey != key;  // 255 where the pixel is not the key
  cv::Mat colour;
  cv::cvtColor(grey, colour, cv::COLOR_GRAY2BGR);
  cv::Mat alpha;
  opaque.convertTo(alpha, grey.depth(), grey.depth() == CV_16U ? 257.0 : 1.0);
  cv::Mat bgra;
  cv::merge(std::vector<cv::Mat>{colour, alpha}, bgra);
  return bgra;
}

// Converts OpenCV's grey, BGR or BGRA result (any of them 8- or 16-bit) to
// 8-bit RGB, with alpha composited on `background` (RGB).
cv::Mat to_rgb8(const cv::Mat& decoded, const std::array<uint8_t, 3>& background) {
  cv::Mat eight_bit;
  if (decoded.depth() == CV_16U) {
    // convertTo rounds, so 65535 maps to 255 and every 8-bit level is reached.
    decoded.convertTo(eight_bit, CV_8U, 255.0 / 65535.0);
  } else {
    eight_bit = decoded;
  }

  cv::Mat rgb;
  if (eight_bit.channels() == 1) {
    cv::cvtColor(eight_bit, rgb, cv::COLOR_GRAY2RGB);
    return rgb;
  }
  if (eight_bit.channels() == 3) {
    cv::cvtColor(eight_bit, rgb, cv::COLOR_BGR2RGB);
    return rgb;
  }

  // BGRA: out = (colour * alpha + background * (255 - alpha)) / 255, rounded.
  rgb.create(eight_bit.rows, eight_bit.cols, CV_8UC3);
  for (int y = 0; y < eight_bit.rows; ++y) {
    const uint8_t* in = eight_bit.ptr<uint8_t>(y);
    uint8_t* out = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < eight_bit.cols; ++x, in += 4, out += 3) {
      const int alpha = in[3];
      for (int c = 0; c < 3; ++c) {
        const int colour = in[2 - c];  // BGR to RGB
        out[c] = static_cast<uint8_t>((colour * alpha + background[c] * (255 - alpha) + 127) / 255);
      }
    }
  }
  return rgb;
}

void check_options(const ImageDecodeOptions& options) {
  if (options.channels != 1 && options.channels != 3) {
    throw std::invalid_argument(
        str_cat("ImageDecodeOptions::channels must be 1 or 3, not ", options.channels));
  }
  if (options.max_pixels <= 0) {
    throw std::invalid_argument(
        str_cat("ImageDecodeOptions::max_pixels must be positive, not ", options.max_pixels));
  }
}

}  // namespace

DecodedImage decode_image(const uint8_t* data, size_t size, const ImageDecodeOptions& options,
                          const std::string& what) {
  check_options(options);
  // The size check comes first, so that a huge image is reported as too large
  // even when its file is also cut off.
  check_pixel_limit(parse_header(data, size, ParseDepth::kHeaderOnly, what), options.max_pixels, what);
  const ImageHeader header = parse_header(data, size, ParseDepth::kWholeFile, what);
  const char* format = format_name(header.format);
  if (size > static_cast<size_t>(INT_MAX)) {
    throw DecodeError("image: too large", str_cat(what, ": the ", format, " file has ", size,
                                                  " bytes, more than the 2 GiB that OpenCV can decode"));
  }

  cv::Mat decoded;
  try {
    // OpenCV does not write to the input buffer; the Mat header only wraps it.
    const cv::Mat encoded(1, static_cast<int>(size), CV_8U, const_cast<uint8_t*>(data));
    decoded = cv::imdecode(encoded, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& error) {
    throw_corrupt(what, format, str_cat("OpenCV failed to decode it: ", error.msg));
  }
  if (decoded.empty()) throw_corrupt(what, format, "OpenCV failed to decode it");
  if (decoded.rows != header.height || decoded.cols != header.width) {
    throw_corrupt(what, format,
                  str_cat("the header gives ", header.width, "x", header.height, " but OpenCV decoded ",
                          decoded.cols, "x", decoded.rows));
  }
  if (decoded.depth() != CV_8U && decoded.depth() != CV_16U) {
    throw_corrupt(what, format, str_cat("OpenCV returned an unexpected sample depth ", decoded.depth()));
  }
  if (decoded.channels() != 1 && decoded.channels() != 3 && decoded.channels() != 4) {
    throw_corrupt(what, format, str_cat("OpenCV returned an unexpected ", decoded.channels(), " channels"));
  }

  if (header.has_grey_key && decoded.channels() == 1) decoded = apply_grey_key(decoded, header);
  cv::Mat pixels = to_rgb8(decoded, options.background);
  if (options.channels == 1) {
    cv::Mat grey;
    cv::cvtColor(pixels, grey, cv::COLOR_RGB2GRAY);
    pixels = grey;
  }
  pixels = apply_orientation(pixels, header.orientation);

  DecodedImage image;
  image.height = pixels.rows;
  image.width = pixels.cols;
  image.channels = options.channels;
  image.pixels.resize(static_cast<size_t>(image.height) * image.width * image.channels);
  const size_t row_bytes = static_cast<size_t>(image.width) * image.channels;
  for (int y = 0; y < image.height; ++y) {
    std::memcpy(image.pixels.data() + y * row_bytes, pixels.ptr<uint8_t>(y), row_bytes);
  }
  return image;
}

DecodedImage decode_image_file(const std::string& path, const ImageDecodeOptions& options) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw DecodeError("image: cannot open",
                      str_cat(path, ": cannot open the image file: ", std::strerror(errno),
                              "; check the path and its permissions"));
  }
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) {
    throw DecodeError("image: cannot open",
                      str_cat(path, ": failed to read the image file: ", std::strerror(errno)));
  }
  return decode_image(bytes.data(), bytes.size(), options, path);
}

std::pair<int, int> image_size(const uint8_t* data, size_t size, const std::string& what) {
  const ImageHeader header = parse_header(data, size, ParseDepth::kHeaderOnly, what);
  const int height = static_cast<int>(header.height);
  const int width = static_cast<int>(header.width);
  // Orientations 5..8 swap the rows and columns.
  if (header.orientation >= 5) return {width, height};
  return {height, width};
}

// ---------------------------------------------------------------------------
// Crops.

CropBox random_resized_crop_box(int height, int width, double scale_min, double scale_max, double ratio_min,
                                double ratio_max, uint64_t draw) {
  if (height <= 0 || width <= 0) {
    throw std::invalid_argument(
        str_cat("random_resized_crop_box: image size ", width, "x", height, " must be positive"));
  }
  if (!(scale_min > 0 && scale_min <= scale_max && scale_max <= 1)) {
    throw std::invalid_argument(str_cat("random_resized_crop_box: scale range [", scale_min, ", ", scale_max,
                                        "] must satisfy 0 < min <= max <= 1"));
  }
  if (!(ratio_min > 0 && ratio_min <= ratio_max && std::isfinite(ratio_max))) {
    throw std::invalid_argument(str_cat("random_resized_crop_box: aspect ratio range [", ratio_min, ", ",
                                        ratio_max, "] must satisfy 0 < min <= max"));
  }

  // Uniform numbers in [0, 1), the k-th one a pure function of (draw, k).
  uint64_t counter = 0;
  auto uniform = [&]() { return unit_double(mix64(draw, counter++)); };

  const double area = static_cast<double>(height) * width;
  const double log_ratio_min = std::log(ratio_min);
  const double log_ratio_max = std::log(ratio_max);
  constexpr int kTries = 10;
  for (int attempt = 0; attempt < kTries; ++attempt) {
    const double target_area = area * (scale_min + (scale_max - scale_min) * uniform());
    const double ratio = std::exp(log_ratio_min + (log_ratio_max - log_ratio_min) * uniform());
    const double box_width = std::round(std::sqrt(target_area * ratio));
    const double box_height = std::round(std::sqrt(target_area / ratio));
    // Draw the position in every attempt so that each attempt uses a fixed
    // number of values.
    const double top_fraction = uniform();
    const double left_fraction = uniform();
    if (box_width < 1 || box_height < 1 || box_width > width || box_height > height) continue;

    CropBox box;
    box.height = static_cast<int>(box_height);
    box.width = static_cast<int>(box_width);
    box.top = std::min(height - box.height, static_cast<int>(top_fraction * (height - box.height + 1)));
    box.left = std::min(width - box.width, static_cast<int>(left_fraction * (width - box.width + 1)));
    return box;
  }

  // Fallback: the whole image, narrowed to the nearest allowed ratio.
  CropBox box;
  box.height = height;
  box.width = width;
  const double image_ratio = static_cast<double>(width) / height;
  if (image_ratio < ratio_min) {
    box.height = std::clamp(static_cast<int>(std::lround(width / ratio_min)), 1, height);
  } else if (image_ratio > ratio_max) {
    box.width = std::clamp(static_cast<int>(std::lround(height * ratio_max)), 1, width);
  }
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

CropBox center_crop_box(int height, int width, int out_height, int out_width, double fraction) {
  if (height <= 0 || width <= 0 || out_height <= 0 || out_width <= 0) {
    throw std::invalid_argument(str_cat("center_crop_box: image size ", width, "x", height,
                                        " and output size ", out_width, "x", out_height,
                                        " must be positive"));
  }
  if (!(fraction > 0 && fraction <= 1)) {
    throw std::invalid_argument(str_cat("center_crop_box: fraction ", fraction, " must be in (0, 1]"));
  }

  // The largest box with the output's ratio that fits, then shrunk.
  const double out_ratio = static_cast<double>(out_width) / out_height;
  double box_height = height;
  double box_width = width;
  if (static_cast<double>(width) / height > out_ratio) {
    box_width = height * out_ratio;
  } else {
    box_height = width / out_ratio;
  }
  CropBox box;
  box.height = std::clamp(static_cast<int>(std::lround(box_height * fraction)), 1, height);
  box.width = std::clamp(static_cast<int>(std::lround(box_width * fraction)), 1, width);
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

void crop_resize(const DecodedImage& image, const CropBox& box, int out_height, int out_width, bool flip,
                 float* out) {
  const int channels = image.channels;
  if (channels != 1 && channels != 3) {
    throw std::invalid_argument(
        str_cat("crop_resize: the image has ", channels, " channels, expected 1 or 3"));
  }
  if (image.height <= 0 || image.width <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.height) * image.width * channels) {
    throw std::invalid_argument(str_cat("crop_resize: the image is ", image.width, "x", image.height, "x",
                                        channels, " but has ", image.pixels.size(), " bytes"));
  }
  if (box.top < 0 || box.left < 0 || box.height <= 0 || box.width <= 0 ||
      box.top > image.height - box.height || box.left > image.width - box.width) {
    throw std::invalid_argument(str_cat("crop_resize: box (top ", box.top, ", left ", box.left, ", ",
                                        box.width, "x", box.height, ") is not inside the ", image.width, "x",
                                        image.height, " image"));
  }
  if (out_height <= 0 || out_width <= 0 || out == nullptr) {
    throw std::invalid_argument(str_cat("crop_resize: output size ", out_width, "x", out_height,
                                        " must be positive and out non-null"));
  }

  // OpenCV only reads through this header.
  const cv::Mat source(image.height, image.width, CV_8UC(channels),
                       const_cast<uint8_t*>(image.pixels.data()));
  const cv::Mat cropped = source(cv::Rect(box.left, box.top, box.width, box.height));
  cv::Mat resized;
  if (box.height == out_height && box.width == out_width) {
    resized = cropped;
  } else {
    const bool shrinking = box.height >= out_height && box.width >= out_width;
    cv::resize(cropped, resized, cv::Size(out_width, out_height), 0, 0,
               shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  }

  // HWC bytes to CHW floats in [-1, 1]: 0 -> -1, 255 -> 1.
  const size_t plane = static_cast<size_t>(out_height) * out_width;
  for (int y = 0; y < out_height; ++y) {
    const uint8_t* row = resized.ptr<uint8_t>(y);
    for (int x = 0; x < out_width; ++x) {
      const int source_x = flip ? out_width - 1 - x : x;
      for (int c = 0; c < channels; ++c) {
        out[c * plane + static_cast<size_t>(y) * out_width + x] =
            row[source_x * channels + c] / 127.5f - 1.0f;
      }
    }
  }
}

}  // namespace imp
