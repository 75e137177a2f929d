// Tests for imp/io/image_decoder.h: decoding JPEG, PNG and WebP files made at
// run time (ImageMagick's convert and cwebp, or PNG and WebP bytes built
// here), the error reasons for bad input, and the crop/resize augmentation.
#include "imp/io/image_decoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../scratch_dir.h"

namespace {

using Bytes = std::vector<uint8_t>;
using imp::testing::ScratchDir;

// ---------------------------------------------------------------------------
// Files and tools.

Bytes read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Runs a shell command (ImageMagick or cwebp) and returns its exit status.
int run(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()); }

// ---------------------------------------------------------------------------
// PNG bytes built in code, so each test controls the colour type, bit depth
// and chunks exactly. The image data is stored uncompressed (deflate stored
// blocks), which every PNG decoder accepts.

uint32_t crc32(const uint8_t* data, size_t size) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void append_be32(Bytes& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(value >> shift));
}

void append_le32(Bytes& out, uint32_t value) {
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<uint8_t>(value >> shift));
}

void append_png_chunk(Bytes& png, const std::string& type, const Bytes& body) {
  append_be32(png, static_cast<uint32_t>(body.size()));
  Bytes typed(type.begin(), type.end());
  typed.insert(typed.end(), body.begin(), body.end());
  png.insert(png.end(), typed.begin(), typed.end());
  append_be32(png, crc32(typed.data(), typed.size()));
}

// A zlib stream of stored (uncompressed) deflate blocks.
Bytes zlib_stored(const Bytes& raw) {
  Bytes out{0x78, 0x01};
  size_t pos = 0;
  do {
    const size_t length = std::min<size_t>(raw.size() - pos, 65535);
    const bool last = pos + length == raw.size();
    out.push_back(last ? 1 : 0);
    out.push_back(static_cast<uint8_t>(length));
    out.push_back(static_cast<uint8_t>(length >> 8));
    out.push_back(static_cast<uint8_t>(~length));
    out.push_back(static_cast<uint8_t>(~length >> 8));
    out.insert(out.end(), raw.begin() + pos, raw.begin() + pos + length);
    pos += length;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;  // Adler-32
  for (uint8_t byte : raw) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  append_be32(out, (b << 16) | a);
  return out;
}

struct PngChunk {
  std::string type;
  Bytes body;
};

// A PNG with the given IHDR fields. `rows` contains each row's packed samples
// (big-endian for 16 bits) without the filter byte. `chunks` go between IHDR
// and IDAT.
Bytes make_png(int width, int height, int bit_depth, int colour_type, const std::vector<Bytes>& rows,
               const std::vector<PngChunk>& chunks = {}) {
  Bytes png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Bytes header;
  append_be32(header, static_cast<uint32_t>(width));
  append_be32(header, static_cast<uint32_t>(height));
  header.insert(header.end(), {static_cast<uint8_t>(bit_depth), static_cast<uint8_t>(colour_type), 0, 0, 0});
  append_png_chunk(png, "IHDR", header);
  for (const PngChunk& chunk : chunks) append_png_chunk(png, chunk.type, chunk.body);
  Bytes raw;
  for (const Bytes& row : rows) {
    raw.push_back(0);  // filter type None
    raw.insert(raw.end(), row.begin(), row.end());
  }
  append_png_chunk(png, "IDAT", zlib_stored(raw));
  append_png_chunk(png, "IEND", {});
  return png;
}

// A little-endian TIFF block with one IFD0 entry: the orientation tag.
Bytes exif_with_orientation(int orientation) {
  // clang-format off
  return {'I', 'I', 42, 0, 8, 0, 0, 0,                            // header, IFD0 at offset 8
          1, 0,                                                   // one entry
          0x12, 0x01, 3, 0, 1, 0, 0, 0,                           // tag 0x0112, SHORT, count 1
          static_cast<uint8_t>(orientation), 0, 0, 0, 0, 0, 0, 0};  // value, next IFD offset 0
  // clang-format on
}

// ---------------------------------------------------------------------------
// Decoding helpers.

const std::string kWhat = "sample.bin";

imp::DecodedImage decode(const Bytes& bytes, const imp::ImageDecodeOptions& options = {}) {
  return imp::decode_image(bytes.data(), bytes.size(), options, kWhat);
}

int pixel(const imp::DecodedImage& image, int y, int x, int c) {
  return image.pixels[(static_cast<size_t>(y) * image.width + x) * image.channels + c];
}

// Returns the DecodeError reason, or a description of what happened instead.
std::string reason_of(const Bytes& bytes, const imp::ImageDecodeOptions& options = {}) {
  try {
    decode(bytes, options);
    return "(decoded)";
  } catch (const imp::DecodeError& error) {
    return error.reason();
  } catch (const std::exception& error) {
    return std::string("(other exception) ") + error.what();
  }
}

// A 4x3 picture of grey levels, used in the alpha tests.
constexpr int kAlphaWidth = 4;
constexpr int kAlphaHeight = 3;
int alpha_test_grey(int y, int x) { return 20 * (y * kAlphaWidth + x) + 10; }
// Alpha levels 0 (transparent) and 255 (opaque) only, because a palette
// colour with partial alpha would need one palette entry per level.
int alpha_test_alpha(int y, int x) { return (x + y) % 2 == 0 ? 255 : 0; }

// ---------------------------------------------------------------------------
// JPEG.

TEST(ImageDecoder, BaselineAndProgressiveJpegMatch) {
  ScratchDir dir("image");
  const std::string baseline = dir.file("baseline.jpg");
  const std::string progressive = dir.file("progressive.jpg");
  ASSERT_EQ(run("convert -size 64x48 gradient:red-blue -quality 95 " + baseline), 0);
  ASSERT_EQ(run("convert " + baseline + " -interlace JPEG " + progressive), 0);
  const Bytes progressive_bytes = read_bytes(progressive);
  const Bytes sof2{0xFF, 0xC2};
  ASSERT_NE(std::search(progressive_bytes.begin(), progressive_bytes.end(), sof2.begin(), sof2.end()),
            progressive_bytes.end())
      << "convert did not write a progressive JPEG";

  const imp::DecodedImage a = imp::decode_image_file(baseline, {});
  const imp::DecodedImage b = decode(progressive_bytes);
  ASSERT_EQ(a.height, 48);
  ASSERT_EQ(a.width, 64);
  ASSERT_EQ(a.channels, 3);
  ASSERT_EQ(b.height, 48);
  ASSERT_EQ(b.width, 64);
  int max_difference = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    max_difference = std::max(max_difference, std::abs(a.pixels[i] - b.pixels[i]));
  }
  EXPECT_LE(max_difference, 8);

  // The gradient runs from red at the top to blue at the bottom, in RGB order.
  EXPECT_GE(pixel(a, 0, 32, 0), 230);
  EXPECT_LE(pixel(a, 0, 32, 2), 25);
  EXPECT_LE(pixel(a, 47, 32, 0), 25);
  EXPECT_GE(pixel(a, 47, 32, 2), 230);
}

TEST(ImageDecoder, CmykJpegIsNotNegative) {
  ScratchDir dir("image");
  const std::string path = dir.file("cmyk.jpg");
  ASSERT_EQ(run("convert -size 16x16 xc:red -colorspace CMYK -quality 95 " + path), 0);
  const Bytes bytes = read_bytes(path);
  // ImageMagick writes the Adobe APP14 marker, whose convention is inverted CMYK.
  const std::string adobe = "Adobe";
  ASSERT_NE(std::search(bytes.begin(), bytes.end(), adobe.begin(), adobe.end()), bytes.end());

  const imp::DecodedImage image = decode(bytes);
  ASSERT_EQ(image.channels, 3);
  EXPECT_GE(pixel(image, 8, 8, 0), 230);
  EXPECT_LE(pixel(image, 8, 8, 1), 30);
  EXPECT_LE(pixel(image, 8, 8, 2), 30);
}

TEST(ImageDecoder, JpegExifOrientationApplied) {
  ScratchDir dir("image");
  const std::string path = dir.file("upright.jpg");
  // Stored 40 wide and 20 high: red top-left, lime top-right, blue
  // bottom-left, yellow bottom-right. ImageMagick 6.9 writes no EXIF block
  // for an image that had none (its -orient option then has no effect), so
  // the APP1 segment with orientation 6 is inserted after SOI here.
  ASSERT_EQ(
      run("convert '(' -size 20x10 xc:red xc:lime +append ')' '(' -size 20x10 xc:blue xc:yellow +append ')' "
          "-append -sampling-factor 1x1 -quality 100 " +
          path),
      0);
  Bytes bytes = read_bytes(path);
  ASSERT_GE(bytes.size(), 2u);
  Bytes app1{0xFF, 0xE1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
  const Bytes exif = exif_with_orientation(6);
  app1.insert(app1.end(), exif.begin(), exif.end());
  app1[3] = static_cast<uint8_t>(app1.size() - 2);  // segment length without the marker
  bytes.insert(bytes.begin() + 2, app1.begin(), app1.end());
  EXPECT_EQ(imp::image_size(bytes.data(), bytes.size(), kWhat), std::make_pair(40, 20));

  // Orientation 6: a quarter turn clockwise makes it 20 wide and 40 high.
  const imp::DecodedImage image = decode(bytes);
  ASSERT_EQ(image.height, 40);
  ASSERT_EQ(image.width, 20);
  auto expect_colour = [&](int y, int x, int r, int g, int b, const char* where) {
    EXPECT_NEAR(pixel(image, y, x, 0), r, 12) << where;
    EXPECT_NEAR(pixel(image, y, x, 1), g, 12) << where;
    EXPECT_NEAR(pixel(image, y, x, 2), b, 12) << where;
  };
  expect_colour(5, 5, 0, 0, 255, "top-left is the stored bottom-left (blue)");
  expect_colour(5, 15, 255, 0, 0, "top-right is the stored top-left (red)");
  expect_colour(35, 15, 0, 255, 0, "bottom-right is the stored top-right (lime)");
  expect_colour(35, 5, 255, 255, 0, "bottom-left is the stored bottom-right (yellow)");
}

TEST(ImageDecoder, TruncatedJpegThrowsTruncated) {
  ScratchDir dir("image");
  const std::string path = dir.file("whole.jpg");
  ASSERT_EQ(run("convert -size 64x48 gradient:red-blue -quality 95 " + path), 0);
  const Bytes whole = read_bytes(path);
  ASSERT_GT(whole.size(), 400u);

  // Cut off the last bytes: libjpeg would fill the missing part with grey,
  // so the decoder must reject the file instead.
  const Bytes cut(whole.begin(), whole.end() - 100);
  EXPECT_EQ(reason_of(cut), "image: truncated");
  // The header is intact, so the size is still known.
  EXPECT_EQ(imp::image_size(cut.data(), cut.size(), kWhat), std::make_pair(48, 64));

  // Every cut point, from inside the headers to just before the end marker,
  // gives a DecodeError and never a crash or a half-grey image.
  for (size_t length = 3; length < whole.size(); length += 7) {
    const Bytes prefix(whole.begin(), whole.begin() + length);
    const std::string reason = reason_of(prefix);
    EXPECT_TRUE(reason == "image: truncated" || reason == "image: corrupt") << length << " bytes: " << reason;
  }
  const Bytes without_end_marker(whole.begin(), whole.end() - 2);
  EXPECT_EQ(reason_of(without_end_marker), "image: truncated");
}

TEST(ImageDecoder, JpegTrailingBytesAccepted) {
  ScratchDir dir("image");
  const std::string path = dir.file("whole.jpg");
  ASSERT_EQ(run("convert -size 8x8 xc:white " + path), 0);
  Bytes bytes = read_bytes(path);
  bytes.insert(bytes.end(), {0, 1, 2, 3});  // some writers pad files after EOI
  const imp::DecodedImage image = decode(bytes);
  EXPECT_EQ(image.height, 8);
  EXPECT_GE(pixel(image, 4, 4, 1), 250);
}

// ---------------------------------------------------------------------------
// PNG.

TEST(ImageDecoder, PngRgbExactPixels) {
  const Bytes png = make_png(2, 1, 8, 2, {{10, 20, 30, 200, 150, 100}});
  const imp::DecodedImage image = decode(png);
  ASSERT_EQ(image.height, 1);
  ASSERT_EQ(image.width, 2);
  ASSERT_EQ(image.channels, 3);
  EXPECT_EQ(image.pixels, (Bytes{10, 20, 30, 200, 150, 100}));
}

TEST(ImageDecoder, Png16BitGradientKeepsLevels) {
  constexpr int kWidth = 1024;
  Bytes row;
  std::vector<int> values;
  for (int x = 0; x < kWidth; ++x) {
    const int value = static_cast<int>(std::lround(x * 65535.0 / (kWidth - 1)));
    values.push_back(value);
    row.push_back(static_cast<uint8_t>(value >> 8));
    row.push_back(static_cast<uint8_t>(value & 0xFF));
  }
  const imp::DecodedImage image = decode(make_png(kWidth, 1, 16, 0, {row}));
  ASSERT_EQ(image.width, kWidth);

  std::set<int> levels;
  int wrong = 0;
  for (int x = 0; x < kWidth; ++x) {
    levels.insert(pixel(image, 0, x, 0));
    EXPECT_EQ(pixel(image, 0, x, 0), pixel(image, 0, x, 2));
    // Scaling by 255/65535 with rounding, not taking the high byte.
    const int expected = static_cast<int>(std::lround(values[x] * 255.0 / 65535.0));
    if (std::abs(pixel(image, 0, x, 0) - expected) > 0) ++wrong;
  }
  EXPECT_GE(levels.size(), 250u);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(pixel(image, 0, 0, 0), 0);
  EXPECT_EQ(pixel(image, 0, kWidth - 1, 0), 255);
  // 0x00C0 scales to 0.75, which rounds to 1. Taking the high byte would
  // give 0, and swapping the bytes would give 192.
  const imp::DecodedImage low = decode(make_png(1, 1, 16, 0, {{0x00, 0xC0}}));
  EXPECT_EQ(pixel(low, 0, 0, 0), 1);
}

TEST(ImageDecoder, PngPaletteExactPixels) {
  const Bytes palette{255, 0, 0, 0, 255, 0, 0, 0, 255};
  const Bytes png = make_png(3, 1, 8, 3, {{2, 0, 1}}, {{"PLTE", palette}});
  const imp::DecodedImage image = decode(png);
  ASSERT_EQ(image.width, 3);
  EXPECT_EQ(image.pixels, (Bytes{0, 0, 255, 255, 0, 0, 0, 255, 0}));
}

TEST(ImageDecoder, TransparentPngsCompositeAlike) {
  const imp::ImageDecodeOptions options{3, 89'478'485, {0, 128, 255}};

  std::vector<Bytes> rgba_rows, rgba16_rows, grey_alpha_rows, palette_rows, grey_key_rows, grey16_key_rows,
      rgb_key_rows;
  Bytes palette, transparency;
  // Palette entry i is the opaque grey of pixel i; the last entry is transparent.
  const int transparent_index = kAlphaWidth * kAlphaHeight;
  for (int y = 0; y < kAlphaHeight; ++y) {
    Bytes rgba, rgba16, grey_alpha, indices, grey_key, grey16_key, rgb_key;
    for (int x = 0; x < kAlphaWidth; ++x) {
      const auto grey = static_cast<uint8_t>(alpha_test_grey(y, x));
      const auto alpha = static_cast<uint8_t>(alpha_test_alpha(y, x));
      rgba.insert(rgba.end(), {grey, grey, grey, alpha});
      rgba16.insert(rgba16.end(), {grey, grey, grey, grey, grey, grey, alpha, alpha});  // v * 257
      grey_alpha.insert(grey_alpha.end(), {grey, alpha});
      indices.push_back(static_cast<uint8_t>(alpha == 0 ? transparent_index : y * kAlphaWidth + x));
      grey_key.push_back(alpha == 0 ? 255 : grey);  // 255 is the transparent grey key
      // 0xFFFF and (1, 2, 3) are the 16-bit grey and the RGB transparent keys.
      grey16_key.insert(grey16_key.end(),
                        {alpha == 0 ? uint8_t{255} : grey, alpha == 0 ? uint8_t{255} : grey});
      rgb_key.insert(rgb_key.end(), {alpha == 0 ? uint8_t{1} : grey, alpha == 0 ? uint8_t{2} : grey,
                                     alpha == 0 ? uint8_t{3} : grey});
      palette.insert(palette.end(), {grey, grey, grey});
      transparency.push_back(255);
    }
    rgba_rows.push_back(rgba);
    rgba16_rows.push_back(rgba16);
    grey_alpha_rows.push_back(grey_alpha);
    palette_rows.push_back(indices);
    grey_key_rows.push_back(grey_key);
    grey16_key_rows.push_back(grey16_key);
    rgb_key_rows.push_back(rgb_key);
  }
  palette.insert(palette.end(), {7, 7, 7});
  transparency.push_back(0);

  const std::vector<std::pair<std::string, Bytes>> files = {
      {"RGBA", make_png(kAlphaWidth, kAlphaHeight, 8, 6, rgba_rows)},
      {"16-bit RGBA", make_png(kAlphaWidth, kAlphaHeight, 16, 6, rgba16_rows)},
      {"grey+alpha", make_png(kAlphaWidth, kAlphaHeight, 8, 4, grey_alpha_rows)},
      {"palette+tRNS",
       make_png(kAlphaWidth, kAlphaHeight, 8, 3, palette_rows, {{"PLTE", palette}, {"tRNS", transparency}})},
      {"grey+tRNS key", make_png(kAlphaWidth, kAlphaHeight, 8, 0, grey_key_rows, {{"tRNS", {0, 255}}})},
      {"16-bit grey+tRNS key",
       make_png(kAlphaWidth, kAlphaHeight, 16, 0, grey16_key_rows, {{"tRNS", {255, 255}}})},
      {"RGB+tRNS key",
       make_png(kAlphaWidth, kAlphaHeight, 8, 2, rgb_key_rows, {{"tRNS", {0, 1, 0, 2, 0, 3}}})},
  };
  for (const auto& [name, bytes] : files) {
    const imp::DecodedImage image = decode(bytes, options);
    ASSERT_EQ(image.height, kAlphaHeight) << name;
    ASSERT_EQ(image.width, kAlphaWidth) << name;
    ASSERT_EQ(image.channels, 3) << name;
    for (int y = 0; y < kAlphaHeight; ++y) {
      for (int x = 0; x < kAlphaWidth; ++x) {
        for (int c = 0; c < 3; ++c) {
          const int expected = alpha_test_alpha(y, x) == 255 ? alpha_test_grey(y, x) : options.background[c];
          EXPECT_EQ(pixel(image, y, x, c), expected) << name << " at y=" << y << " x=" << x << " c=" << c;
        }
      }
    }
  }
}

TEST(ImageDecoder, PartialAlphaBlendsWithBackground) {
  // One pixel of (200, 100, 0) at alpha 128 over the background (0, 0, 255):
  // (colour * 128 + background * 127) / 255, rounded.
  const Bytes png = make_png(1, 1, 8, 6, {{200, 100, 0, 128}});
  const imp::DecodedImage image = decode(png, {3, 89'478'485, {0, 0, 255}});
  EXPECT_EQ(pixel(image, 0, 0, 0), 100);  // 25600 / 255 = 100.4
  EXPECT_EQ(pixel(image, 0, 0, 1), 50);   // 12800 / 255 = 50.2
  EXPECT_EQ(pixel(image, 0, 0, 2), 127);  // 32385 / 255 = 127
}

TEST(ImageDecoder, OneBitGreyKeyTransparent) {
  // Two 1-bit pixels, 0 and 1, with 1 as the transparent key. libpng expands
  // the samples to 0 and 255, so the key is compared at that scale.
  const Bytes png = make_png(2, 1, 1, 0, {{0b01000000}}, {{"tRNS", {0, 1}}});
  const imp::DecodedImage image = decode(png, {3, 89'478'485, {0, 128, 255}});
  EXPECT_EQ(image.pixels, (Bytes{0, 0, 0, 0, 128, 255}));
}

TEST(ImageDecoder, PngExifOrientationAllValues) {
  // Stored 3 wide and 2 high, every pixel a different grey level.
  constexpr int kHeight = 2, kWidth = 3;
  const std::vector<Bytes> rows{{10, 20, 30}, {40, 50, 60}};
  auto stored = [&](int r, int c) { return rows[r][c]; };
  // Where each displayed pixel (y, x) comes from, as the EXIF specification
  // defines the orientation values.
  auto source = [&](int orientation, int y, int x) -> std::pair<int, int> {
    // clang-format off
    switch (orientation) {
      case 2: return {y, kWidth - 1 - x};
      case 3: return {kHeight - 1 - y, kWidth - 1 - x};
      case 4: return {kHeight - 1 - y, x};
      case 5: return {x, y};
      case 6: return {kHeight - 1 - x, y};
      case 7: return {kHeight - 1 - x, kWidth - 1 - y};
      case 8: return {x, kWidth - 1 - y};
      default: return {y, x};
    }
    // clang-format on
  };
  for (int orientation = 1; orientation <= 8; ++orientation) {
    const Bytes png = make_png(kWidth, kHeight, 8, 0, rows, {{"eXIf", exif_with_orientation(orientation)}});
    const imp::DecodedImage image = decode(png, {1, 89'478'485, {255, 255, 255}});
    const bool swapped = orientation >= 5;
    ASSERT_EQ(image.height, swapped ? kWidth : kHeight) << "orientation " << orientation;
    ASSERT_EQ(image.width, swapped ? kHeight : kWidth) << "orientation " << orientation;
    EXPECT_EQ(imp::image_size(png.data(), png.size(), kWhat), std::make_pair(image.height, image.width));
    for (int y = 0; y < image.height; ++y) {
      for (int x = 0; x < image.width; ++x) {
        const auto [r, c] = source(orientation, y, x);
        EXPECT_EQ(pixel(image, y, x, 0), stored(r, c))
            << "orientation " << orientation << " y=" << y << " x=" << x;
      }
    }
  }
}

TEST(ImageDecoder, GreyExpandedToThreeChannels) {
  const Bytes png = make_png(2, 1, 8, 0, {{0, 77}});
  const imp::DecodedImage image = decode(png);
  ASSERT_EQ(image.channels, 3);
  EXPECT_EQ(image.pixels, (Bytes{0, 0, 0, 77, 77, 77}));
}

TEST(ImageDecoder, ColourConvertedToOneChannel) {
  // BT.601 luma: 0.299 R + 0.587 G + 0.114 B.
  const Bytes png = make_png(3, 1, 8, 2, {{255, 0, 0, 0, 255, 0, 0, 0, 255}});
  const imp::DecodedImage image = decode(png, {1, 89'478'485, {255, 255, 255}});
  ASSERT_EQ(image.channels, 1);
  ASSERT_EQ(image.pixels.size(), 3u);
  EXPECT_NEAR(image.pixels[0], 76, 1);
  EXPECT_NEAR(image.pixels[1], 150, 1);
  EXPECT_NEAR(image.pixels[2], 29, 1);
}

TEST(ImageDecoder, TruncatedPngThrowsTruncated) {
  const Bytes png = make_png(2, 1, 8, 0, {{0, 77}});
  const Bytes cut(png.begin(), png.end() - 6);
  EXPECT_EQ(reason_of(cut), "image: truncated");
  EXPECT_EQ(imp::image_size(cut.data(), cut.size(), kWhat), std::make_pair(1, 2));
}

TEST(ImageDecoder, CorruptPngDataThrowsCorrupt) {
  // The chunk structure is complete but IDAT is not a zlib stream.
  Bytes png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  append_png_chunk(png, "IHDR", {0, 0, 0, 4, 0, 0, 0, 4, 8, 0, 0, 0, 0});
  append_png_chunk(png, "IDAT", {1, 2, 3, 4, 5, 6, 7, 8});
  append_png_chunk(png, "IEND", {});
  EXPECT_EQ(reason_of(png), "image: corrupt");
}

// ---------------------------------------------------------------------------
// WebP.

// A lossless WebP of a 3x2 RGB PNG made with cwebp.
Bytes make_lossless_webp(const ScratchDir& dir, const std::vector<Bytes>& rgb_rows, int width) {
  const std::string png = dir.file("source.png");
  const std::string webp = dir.file("lossless.webp");
  write_bytes(png, make_png(width, static_cast<int>(rgb_rows.size()), 8, 2, rgb_rows));
  if (run("cwebp -quiet -lossless -exact " + png + " -o " + webp) != 0) return {};
  return read_bytes(webp);
}

TEST(ImageDecoder, LosslessWebpExactPixels) {
  ScratchDir dir("image");
  const std::vector<Bytes> rows{{255, 0, 0, 0, 255, 0, 0, 0, 255}, {10, 20, 30, 40, 50, 60, 70, 80, 90}};
  const Bytes webp = make_lossless_webp(dir, rows, 3);
  ASSERT_FALSE(webp.empty()) << "cwebp failed";

  EXPECT_EQ(imp::image_size(webp.data(), webp.size(), kWhat), std::make_pair(2, 3));
  const imp::DecodedImage image = decode(webp);
  ASSERT_EQ(image.height, 2);
  ASSERT_EQ(image.width, 3);
  Bytes expected = rows[0];
  expected.insert(expected.end(), rows[1].begin(), rows[1].end());
  EXPECT_EQ(image.pixels, expected);
}

TEST(ImageDecoder, WebpExifOrientationApplied) {
  ScratchDir dir("image");
  const std::vector<Bytes> rows{{10, 10, 10, 20, 20, 20, 30, 30, 30}, {40, 40, 40, 50, 50, 50, 60, 60, 60}};
  const Bytes simple = make_lossless_webp(dir, rows, 3);
  ASSERT_GE(simple.size(), 20u) << "cwebp failed";

  // Rewrap as the extended format: VP8X (EXIF flag, canvas 3x2), the
  // VP8L chunk from cwebp, then an EXIF chunk with orientation 8.
  Bytes body{'W', 'E', 'B', 'P', 'V', 'P', '8', 'X'};
  append_le32(body, 10);
  body.insert(body.end(), {0x08, 0, 0, 0, 2, 0, 0, 1, 0, 0});
  body.insert(body.end(), simple.begin() + 12, simple.end());
  const Bytes exif = exif_with_orientation(8);
  body.insert(body.end(), {'E', 'X', 'I', 'F'});
  append_le32(body, static_cast<uint32_t>(exif.size()));
  body.insert(body.end(), exif.begin(), exif.end());
  Bytes webp{'R', 'I', 'F', 'F'};
  append_le32(webp, static_cast<uint32_t>(body.size()));
  webp.insert(webp.end(), body.begin(), body.end());

  // Orientation 8: a quarter turn counter-clockwise, so the stored top-right
  // (30) becomes the top-left and the stored bottom-left (40) the bottom-right.
  const imp::DecodedImage image = decode(webp);
  ASSERT_EQ(image.height, 3);
  ASSERT_EQ(image.width, 2);
  EXPECT_EQ(pixel(image, 0, 0, 0), 30);
  EXPECT_EQ(pixel(image, 0, 1, 0), 60);
  EXPECT_EQ(pixel(image, 2, 0, 0), 10);
  EXPECT_EQ(pixel(image, 2, 1, 0), 40);
  EXPECT_EQ(imp::image_size(webp.data(), webp.size(), kWhat), std::make_pair(3, 2));
}

TEST(ImageDecoder, WebpAlphaComposited) {
  ScratchDir dir("image");
  const std::string png = dir.file("transparent.png");
  const std::string webp = dir.file("transparent.webp");
  // Opaque (200, 100, 0) on the left, fully transparent on the right.
  write_bytes(png, make_png(2, 1, 8, 6, {{200, 100, 0, 255, 9, 9, 9, 0}}));
  ASSERT_EQ(run("cwebp -quiet -lossless -exact " + png + " -o " + webp), 0);

  const imp::DecodedImage image = imp::decode_image_file(webp, {3, 89'478'485, {0, 128, 255}});
  ASSERT_EQ(image.width, 2);
  EXPECT_EQ(image.pixels, (Bytes{200, 100, 0, 0, 128, 255}));
}

TEST(ImageDecoder, LossyWebpSizeAndColour) {
  ScratchDir dir("image");
  const std::string png = dir.file("red.png");
  const std::string webp = dir.file("red.webp");
  ASSERT_EQ(run("convert -size 30x20 xc:red " + png), 0);
  ASSERT_EQ(run("cwebp -quiet -q 90 " + png + " -o " + webp), 0);
  const Bytes bytes = read_bytes(webp);
  ASSERT_EQ(std::string(bytes.begin() + 12, bytes.begin() + 16), "VP8 ");

  EXPECT_EQ(imp::image_size(bytes.data(), bytes.size(), kWhat), std::make_pair(20, 30));
  const imp::DecodedImage image = decode(bytes);
  ASSERT_EQ(image.height, 20);
  ASSERT_EQ(image.width, 30);
  EXPECT_GE(pixel(image, 10, 15, 0), 230);
  EXPECT_LE(pixel(image, 10, 15, 1), 30);
  EXPECT_LE(pixel(image, 10, 15, 2), 30);
}

TEST(ImageDecoder, TruncatedWebpThrowsTruncated) {
  ScratchDir dir("image");
  const Bytes webp = make_lossless_webp(dir, {{1, 2, 3, 4, 5, 6}}, 2);
  ASSERT_GE(webp.size(), 20u) << "cwebp failed";
  const Bytes cut(webp.begin(), webp.end() - 3);
  EXPECT_EQ(reason_of(cut), "image: truncated");
}

// ---------------------------------------------------------------------------
// Size limit and bad input.

TEST(ImageDecoder, HugePngHeaderRejectedBeforeDecoding) {
  // 30000x30000 RGB would need 2.7 GB; the file is a few dozen bytes.
  Bytes png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Bytes header;
  append_be32(header, 30000);
  append_be32(header, 30000);
  header.insert(header.end(), {8, 2, 0, 0, 0});
  append_png_chunk(png, "IHDR", header);
  append_png_chunk(png, "IDAT", zlib_stored({0}));
  append_png_chunk(png, "IEND", {});
  EXPECT_EQ(reason_of(png), "image: too large");
  EXPECT_EQ(imp::image_size(png.data(), png.size(), kWhat), std::make_pair(30000, 30000));
  try {
    decode(png);
  } catch (const imp::DecodeError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(kWhat), std::string::npos) << message;
    EXPECT_NE(message.find("30000x30000"), std::string::npos) << message;
  }
}

TEST(ImageDecoder, HugeJpegHeaderRejectedBeforeDecoding) {
  // SOI, then a baseline frame header for 30000x30000 with three components,
  // then EOI: no scan data at all.
  const Bytes jpeg{0xFF, 0xD8, 0xFF, 0xC0, 0,    17, 8, 0x75, 0x30, 0x75, 0x30, 3,
                   1,    0x22, 0,    2,    0x11, 1,  3, 0x11, 1,    0xFF, 0xD9};
  EXPECT_EQ(reason_of(jpeg), "image: too large");
  EXPECT_EQ(imp::image_size(jpeg.data(), jpeg.size(), kWhat), std::make_pair(30000, 30000));
}

TEST(ImageDecoder, ImageAtPixelLimitDecodes) {
  ScratchDir dir("image");
  const std::string path = dir.file("limit.jpg");
  ASSERT_EQ(run("convert -size 64x48 xc:gray50 " + path), 0);
  imp::ImageDecodeOptions options;
  options.max_pixels = 64 * 48;
  EXPECT_EQ(imp::decode_image_file(path, options).height, 48);
  options.max_pixels = 64 * 48 - 1;
  EXPECT_EQ(reason_of(read_bytes(path), options), "image: too large");
}

TEST(ImageDecoder, EmptyInputRejected) {
  EXPECT_EQ(reason_of({}), "image: empty");
  EXPECT_THROW(imp::image_size(nullptr, 0, kWhat), imp::DecodeError);
}

TEST(ImageDecoder, RandomBytesRejected) {
  Bytes noise(1000);
  uint32_t state = 12345;
  for (uint8_t& byte : noise) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<uint8_t>(state >> 24);
  }
  EXPECT_EQ(reason_of(noise), "image: unknown format");
  const std::string html = "<html><body>404 Not Found</body></html>";
  EXPECT_EQ(reason_of(Bytes(html.begin(), html.end())), "image: unknown format");
}

TEST(ImageDecoder, OtherFormatsUnsupported) {
  ScratchDir dir("image");
  const std::string gif = dir.file("picture.gif");
  ASSERT_EQ(run("convert -size 4x4 xc:red " + gif), 0);
  EXPECT_EQ(reason_of(read_bytes(gif)), "image: unsupported format");
}

TEST(ImageDecoder, MissingFileCannotOpen) {
  ScratchDir dir("image");
  const std::string path = dir.file("missing.jpg");
  try {
    imp::decode_image_file(path, {});
    FAIL() << "no exception";
  } catch (const imp::DecodeError& error) {
    EXPECT_EQ(error.reason(), "image: cannot open");
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }
}

TEST(ImageDecoder, InvalidOptionsRejected) {
  const Bytes png = make_png(1, 1, 8, 0, {{0}});
  EXPECT_THROW(decode(png, {2, 100, {0, 0, 0}}), std::invalid_argument);
  EXPECT_THROW(decode(png, {3, 0, {0, 0, 0}}), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Crop boxes.

bool inside(const imp::CropBox& box, int height, int width) {
  return box.top >= 0 && box.left >= 0 && box.height >= 1 && box.width >= 1 &&
         box.top + box.height <= height && box.left + box.width <= width;
}

TEST(CropBox, RandomBoxDeterministicForDraw) {
  std::set<std::vector<int>> distinct;
  for (uint64_t draw = 0; draw < 20; ++draw) {
    const imp::CropBox a = imp::random_resized_crop_box(480, 640, 0.08, 1.0, 3.0 / 4, 4.0 / 3, draw);
    const imp::CropBox b = imp::random_resized_crop_box(480, 640, 0.08, 1.0, 3.0 / 4, 4.0 / 3, draw);
    EXPECT_EQ(a.top, b.top);
    EXPECT_EQ(a.left, b.left);
    EXPECT_EQ(a.height, b.height);
    EXPECT_EQ(a.width, b.width);
    distinct.insert({a.top, a.left, a.height, a.width});
  }
  EXPECT_GE(distinct.size(), 18u);
}

TEST(CropBox, RandomBoxInsideAndWithinBounds) {
  struct Case {
    int height, width;
    double largest_possible_area;  // the ratio range limits the area of a long, thin image
  };
  const std::vector<Case> cases{
      {480, 640, 1.0}, {640, 480, 1.0}, {100, 30, 0.4}, {30, 100, 0.4}, {224, 224, 1.0}};
  constexpr double kScaleMin = 0.08, kScaleMax = 1.0, kRatioMin = 3.0 / 4, kRatioMax = 4.0 / 3;
  for (const auto& [height, width, largest_possible_area] : cases) {
    double smallest_area = 1, largest_area = 0;
    for (uint64_t draw = 0; draw < 300; ++draw) {
      const uint64_t mixed = draw * 0x9E3779B97F4A7C15ULL;
      const imp::CropBox box =
          imp::random_resized_crop_box(height, width, kScaleMin, kScaleMax, kRatioMin, kRatioMax, mixed);
      ASSERT_TRUE(inside(box, height, width)) << height << "x" << width << " draw " << draw << ": " << box.top
                                              << "," << box.left << " " << box.height << "x" << box.width;
      // Rounding each side to whole pixels moves the area and the ratio a little.
      const double area = static_cast<double>(box.height) * box.width / (static_cast<double>(height) * width);
      const double area_slack = (box.height + box.width + 1.0) / (static_cast<double>(height) * width);
      EXPECT_GE(area, kScaleMin - area_slack) << height << "x" << width << " draw " << draw;
      EXPECT_LE(area, kScaleMax + area_slack) << height << "x" << width << " draw " << draw;
      const double ratio = static_cast<double>(box.width) / box.height;
      EXPECT_GE(ratio,
                kRatioMin * (box.width - 0.5) / (box.width + 0.5) * (box.height - 0.5) / (box.height + 0.5))
          << height << "x" << width << " draw " << draw;
      EXPECT_LE(ratio,
                kRatioMax * (box.width + 0.5) / (box.width - 0.5) * (box.height + 0.5) / (box.height - 0.5))
          << height << "x" << width << " draw " << draw;
      smallest_area = std::min(smallest_area, area);
      largest_area = std::max(largest_area, area);
    }
    // The draws cover the scale range.
    EXPECT_LT(smallest_area, 0.2) << height << "x" << width;
    EXPECT_GT(largest_area, 0.6 * largest_possible_area) << height << "x" << width;
    EXPECT_LE(largest_area, largest_possible_area + 0.02) << height << "x" << width;
  }
}

TEST(CropBox, RandomBoxFallsBackToCentreCrop) {
  // The full area with a ratio of at most 4:3 never fits a 3:1 image, so all
  // ten tries fail and the centre crop of height 100 and ratio 4:3 remains.
  for (uint64_t draw = 0; draw < 5; ++draw) {
    const imp::CropBox box = imp::random_resized_crop_box(100, 300, 1.0, 1.0, 3.0 / 4, 4.0 / 3, draw);
    EXPECT_EQ(box.height, 100);
    EXPECT_EQ(box.width, 133);
    EXPECT_EQ(box.top, 0);
    EXPECT_EQ(box.left, 83);
  }
}

TEST(CropBox, RandomBoxInvalidArgumentsRejected) {
  EXPECT_THROW(imp::random_resized_crop_box(0, 10, 0.5, 1, 1, 1, 0), std::invalid_argument);
  EXPECT_THROW(imp::random_resized_crop_box(10, 10, 0, 1, 1, 1, 0), std::invalid_argument);
  EXPECT_THROW(imp::random_resized_crop_box(10, 10, 0.8, 0.5, 1, 1, 0), std::invalid_argument);
  EXPECT_THROW(imp::random_resized_crop_box(10, 10, 8, 100, 1, 1, 0), std::invalid_argument);
  EXPECT_THROW(imp::random_resized_crop_box(10, 10, 0.5, 1, 2, 1, 0), std::invalid_argument);
}

TEST(CropBox, CenterCropSquareOutput) {
  const imp::CropBox box = imp::center_crop_box(480, 640, 224, 224, 0.875);
  EXPECT_EQ(box.height, 420);
  EXPECT_EQ(box.width, 420);
  EXPECT_EQ(box.top, 30);
  EXPECT_EQ(box.left, 110);
}

TEST(CropBox, CenterCropKeepsOutputRatio) {
  // A 2:1 output from a square image: the full width and half the height.
  const imp::CropBox box = imp::center_crop_box(100, 100, 50, 100, 1.0);
  EXPECT_EQ(box.height, 50);
  EXPECT_EQ(box.width, 100);
  EXPECT_EQ(box.top, 25);
  EXPECT_EQ(box.left, 0);
  EXPECT_THROW(imp::center_crop_box(100, 100, 50, 100, 0.0), std::invalid_argument);
  EXPECT_THROW(imp::center_crop_box(100, 100, 50, 100, 1.5), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// crop_resize.

imp::DecodedImage make_image(int height, int width, int channels,
                             const std::function<int(int, int, int)>& value) {
  imp::DecodedImage image;
  image.height = height;
  image.width = width;
  image.channels = channels;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) image.pixels.push_back(static_cast<uint8_t>(value(y, x, c)));
    }
  }
  return image;
}

float scaled(int value) { return value / 127.5f - 1.0f; }

TEST(CropResize, SameSizeCopiesBoxChannelMajor) {
  // Pixel (y, x, c) = 100 c + 10 y + x; cut rows 1..2 and columns 2..4.
  const imp::DecodedImage image =
      make_image(4, 6, 3, [](int y, int x, int c) { return 100 * c + 10 * y + x; });
  const imp::CropBox box{1, 2, 2, 3};
  std::vector<float> out(3 * 2 * 3);
  imp::crop_resize(image, box, 2, 3, false, out.data());
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 2; ++y) {
      for (int x = 0; x < 3; ++x) {
        EXPECT_FLOAT_EQ(out[(c * 2 + y) * 3 + x], scaled(100 * c + 10 * (y + 1) + (x + 2)))
            << "c=" << c << " y=" << y << " x=" << x;
      }
    }
  }
}

TEST(CropResize, ShrinkAveragesBlocks) {
  // Each 2x2 block holds 10, 20, 30, 40 plus a block offset; area
  // interpolation at half size gives the block mean, 25 plus the offset.
  const imp::DecodedImage image = make_image(4, 4, 1, [](int y, int x, int) {
    return 10 * (1 + (y % 2) * 2 + (x % 2)) + 100 * (y / 2) + 50 * (x / 2);
  });
  std::vector<float> out(4);
  imp::crop_resize(image, {0, 0, 4, 4}, 2, 2, false, out.data());
  EXPECT_FLOAT_EQ(out[0], scaled(25));
  EXPECT_FLOAT_EQ(out[1], scaled(75));
  EXPECT_FLOAT_EQ(out[2], scaled(125));
  EXPECT_FLOAT_EQ(out[3], scaled(175));
}

TEST(CropResize, EnlargeInterpolatesBilinearly) {
  // 0 and 255 side by side, doubled: pixel centres at source x = -0.25
  // (clamped), 0.25, 0.75 and 1.25 (clamped) give 0, 64, 191 and 255.
  const imp::DecodedImage image = make_image(1, 2, 1, [](int, int x, int) { return x == 0 ? 0 : 255; });
  std::vector<float> out(4);
  imp::crop_resize(image, {0, 0, 1, 2}, 1, 4, false, out.data());
  const float level = 1 / 127.5f;
  EXPECT_FLOAT_EQ(out[0], -1.0f);
  EXPECT_NEAR(out[1], scaled(64), level);
  EXPECT_NEAR(out[2], scaled(191), level);
  EXPECT_FLOAT_EQ(out[3], 1.0f);
}

TEST(CropResize, FlipMirrorsExactly) {
  const imp::DecodedImage image =
      make_image(9, 13, 3, [](int y, int x, int c) { return (y * 37 + x * 11 + c * 71) % 256; });
  const imp::CropBox box{1, 2, 7, 9};
  std::vector<float> plain(3 * 5 * 6), flipped(3 * 5 * 6);
  imp::crop_resize(image, box, 5, 6, false, plain.data());
  imp::crop_resize(image, box, 5, 6, true, flipped.data());
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 5; ++y) {
      for (int x = 0; x < 6; ++x) {
        EXPECT_EQ(flipped[(c * 5 + y) * 6 + x], plain[(c * 5 + y) * 6 + (5 - x)])
            << c << "," << y << "," << x;
      }
    }
  }
}

TEST(CropResize, OutputWithinMinusOneToOne) {
  const imp::DecodedImage image =
      make_image(16, 16, 3, [](int y, int x, int c) { return (x + y) % 2 == 0 ? 255 * (c != 1) : 0; });
  std::vector<float> out(3 * 7 * 11);
  imp::crop_resize(image, {0, 0, 16, 16}, 7, 11, false, out.data());
  const auto [low, high] = std::minmax_element(out.begin(), out.end());
  EXPECT_GE(*low, -1.0f);
  EXPECT_LE(*high, 1.0f);
  std::vector<float> exact(3);
  imp::crop_resize(image, {0, 0, 1, 1}, 1, 1, false, exact.data());
  EXPECT_EQ(exact[0], 1.0f);   // 255
  EXPECT_EQ(exact[1], -1.0f);  // 0
}

TEST(CropResize, BoxOutsideImageRejected) {
  const imp::DecodedImage image = make_image(4, 4, 1, [](int, int, int) { return 0; });
  std::vector<float> out(4);
  EXPECT_THROW(imp::crop_resize(image, {3, 0, 2, 2}, 2, 2, false, out.data()), std::invalid_argument);
  EXPECT_THROW(imp::crop_resize(image, {0, -1, 2, 2}, 2, 2, false, out.data()), std::invalid_argument);
  EXPECT_THROW(imp::crop_resize(image, {0, 0, 2, 2}, 0, 2, false, out.data()), std::invalid_argument);
}

}  // namespace
