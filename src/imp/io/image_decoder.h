// Image decoding and augmentation for user data sets. decode_image turns the
// encoded bytes of a JPEG, PNG or WebP file into 8-bit RGB (or grey) pixels,
// and the crop functions turn those pixels into the model's float input.
//
// Decoding uses OpenCV's imgcodecs with IMREAD_UNCHANGED and does the rest
// here, so that all formats behave the same:
//  - the pixel count is read from the file header and checked against
//    max_pixels before OpenCV allocates anything;
//  - 16-bit samples are scaled by 255/65535 with rounding;
//  - alpha (and a PNG grey colour key) is composited on a background colour;
//  - the EXIF orientation tag (JPEG APP1, PNG eXIf, WebP EXIF chunk) is
//    applied, so the pixels come out the way a viewer shows them;
//  - CMYK and YCCK JPEGs come out in the right colours when they follow the
//    Adobe convention of inverted samples, which ImageMagick 6.9 writes
//    together with an Adobe APP14 marker and OpenCV 4.6 expects.
//    NOTE: OpenCV also inverts a CMYK JPEG without that marker, whose writer
//    may have meant plain samples; such a file comes out with wrong colours.
//
// Input that cannot be decoded throws DecodeError with one of these reasons:
//   "image: empty"              no bytes;
//   "image: unknown format"     no JPEG, PNG or WebP signature;
//   "image: unsupported format" a format that is recognised but not decoded
//                               here (GIF, BMP, TIFF, HEIF/AVIF, animated WebP);
//   "image: truncated"          the data ends before the format's end marker
//                               (JPEG EOI, PNG IEND, the WebP RIFF size), so a
//                               cut-off file is rejected, never half decoded;
//   "image: corrupt"            a malformed header, or OpenCV failed to decode;
//   "image: too large"          width * height exceeds max_pixels;
//   "image: cannot open"        decode_image_file could not read the file.
// Invalid arguments (options, crop boxes, output sizes) throw
// std::invalid_argument, because they are programming or configuration errors.
//
// The functions keep no shared state, so threads may call them concurrently.
// OpenCV's resize and colour conversion may use OpenCV's own thread pool, so a
// data loader that runs many decoding threads can call cv::setNumThreads(1)
// once to avoid oversubscription.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "imp/io/decode_error.h"

namespace imp {

struct ImageDecodeOptions {
  int channels = 3;  // 3: RGB (grey expanded); 1: grey (colour converted with BT.601 weights)
  // Limit on width * height, checked from the header before decoding allocates.
  // NOTE: OpenCV's imgcodecs (4.5, 4.6) applies its own limit as well, the
  // environment variable OPENCV_IO_MAX_IMAGE_PIXELS with a default of 2^30;
  // an image above it is reported as "image: corrupt".
  int64_t max_pixels = 89'478'485;
  std::array<uint8_t, 3> background{255, 255, 255};  // alpha is composited on this colour (RGB)
};

// 8-bit pixels, rows top to bottom, interleaved HWC, RGB order (or one grey channel).
struct DecodedImage {
  int height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels
};

// Decodes a JPEG, PNG or WebP image. `what` names the sample in error
// messages (e.g. "shard.tar:000123.jpg").
DecodedImage decode_image(const uint8_t* data, size_t size, const ImageDecodeOptions& options,
                          const std::string& what);

// Reads the file at `path`, then calls decode_image with the path as `what`.
// A missing or unreadable file throws DecodeError "image: cannot open".
DecodedImage decode_image_file(const std::string& path, const ImageDecodeOptions& options);

// Returns {height, width} from the header alone, after the EXIF orientation,
// so it equals the size that decode_image returns. Throws DecodeError when the
// format is not recognised or the header is malformed or cut off. It does not
// check that the rest of the file is complete.
std::pair<int, int> image_size(const uint8_t* data, size_t size, const std::string& what);

// A rectangle inside an image, in pixels.
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};

// Inception-style random resized crop: area fraction uniform in
// [scale_min, scale_max] (0 < scale_min <= scale_max <= 1), log-uniform aspect
// ratio width/height in [ratio_min, ratio_max], up to 10 tries, then a centre
// crop of the largest box with the ratio clamped to that range. All randomness
// comes from `draw` (a 64-bit number the caller derives from seed and example),
// so the same draw gives the same box. Rounding each side to whole pixels can
// put the area and ratio slightly outside their ranges, by up to half a pixel
// per side.
CropBox random_resized_crop_box(int height, int width, double scale_min, double scale_max, double ratio_min,
                                double ratio_max, uint64_t draw);

// Evaluation crop: the largest centred box with the output's aspect ratio,
// shrunk by `fraction` (0 < fraction <= 1) on each side. For a square output
// its side is `fraction` times the image's shorter side (0.875 is the usual
// choice, as in resizing to 256 and cropping 224).
CropBox center_crop_box(int height, int width, int out_height, int out_width, double fraction);

// Cuts `box` out of `image`, resizes it to out_height x out_width, mirrors it
// left-right when `flip`, and writes channel-major float values scaled from
// [0,255] to [-1,1] into out[image.channels * out_height * out_width].
// Resizing uses area interpolation when the box shrinks in both directions
// and bilinear interpolation otherwise (also when only one direction grows).
void crop_resize(const DecodedImage& image, const CropBox& box, int out_height, int out_width, bool flip,
                 float* out);

}  // namespace imp
