#include "runner/common/image.h"

#include "runner/common/resample.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace torchchat {

using tokenizers::MakeError;

namespace {

// Reads one header field of a PPM: whitespace and # comments before it.
bool HeaderInt(const std::string& d, size_t* at, int64_t* out) {
  while (*at < d.size()) {
    if (d[*at] == '#') {
      while (*at < d.size() && d[*at] != '\n') ++*at;
    } else if (std::isspace(static_cast<unsigned char>(d[*at]))) {
      ++*at;
    } else {
      break;
    }
  }
  int64_t v = 0;
  size_t digits = 0;
  while (*at < d.size() && std::isdigit(static_cast<unsigned char>(d[*at])) && digits < 9) {
    v = v * 10 + (d[*at] - '0');
    ++*at;
    ++digits;
  }
  *out = v;
  return digits > 0;
}

Result<std::string> TokenText(const tokenizers::Tokenizer& tok, int64_t id, const char* what) {
  auto text = tok.IdToPiece(static_cast<int>(id));
  if (!text.ok() || text->empty()) {
    return MakeError(std::string("the tokenizer has no ") + what + " token (id " +
                     std::to_string(id) + ")");
  }
  return *text;
}

size_t Count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) {
    ++n;
  }
  return n;
}

}  // namespace

Result<RgbImage> ParsePpm(const std::string& data, const std::string& name) {
  if (data.size() < 2 || data[0] != 'P' || data[1] != '6') {
    return MakeError(
        name + ": not a binary PPM (P6) image; the runners read PPM only (" +
        "convert it, e.g. with Pillow: Image.open(f).convert(\"RGB\").save(\"x.ppm\"))");
  }
  size_t at = 2;
  RgbImage img;
  int64_t maxval = 0;
  if (!HeaderInt(data, &at, &img.width) || !HeaderInt(data, &at, &img.height) ||
      !HeaderInt(data, &at, &maxval) || at >= data.size() ||
      !std::isspace(static_cast<unsigned char>(data[at]))) {
    return MakeError(name + ": a PPM with a broken header");
  }
  ++at;  // the one whitespace byte before the pixels
  if (maxval != 255) {
    return MakeError(name + ": a PPM with maxval " + std::to_string(maxval) + "; only 255 is read");
  }
  if (img.width <= 0 || img.height <= 0 || img.width > 8192 || img.height > 8192) {
    return MakeError(name + ": " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                     " is not a size an image can have here (1 to 8192 per side)");
  }
  const size_t bytes = static_cast<size_t>(img.width * img.height * 3);
  if (data.size() - at < bytes) {
    return MakeError(name + ": truncated (" + std::to_string(data.size() - at) + " of " +
                     std::to_string(bytes) + " pixel bytes)");
  }
  img.rgb.assign(data.begin() + static_cast<std::ptrdiff_t>(at),
                 data.begin() + static_cast<std::ptrdiff_t>(at + bytes));
  return img;
}

Result<RgbImage> ReadPpm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakeError(path + ": cannot open it");
  std::ostringstream buf;
  buf << in.rdbuf();
  return ParsePpm(buf.str(), path);
}

Result<std::vector<uint8_t>> ImagePixels(const RgbImage& image, const VisionMetadata& v,
                                         const std::string& name) {
  const int64_t s = v.image_size;
  if (image.width != s || image.height != s) {
    return MakeError(name + ": " + std::to_string(image.width) + "x" +
                     std::to_string(image.height) + "; this model takes " + std::to_string(s) +
                     "x" + std::to_string(s) + " images (resize it first, as the processor does)");
  }
  const size_t plane = static_cast<size_t>(s * s);
  std::vector<uint8_t> chw(plane * 3);
  for (size_t p = 0; p < plane; ++p) {
    for (size_t c = 0; c < 3; ++c) chw[c * plane + p] = image.rgb[p * 3 + c];
  }
  return chw;
}

namespace {

// SmolVLM's processor's bound on a resized image's side.
constexpr int64_t kMaxSide = 4096;
constexpr char kFake[] = "<fake_token_around_image>";
constexpr char kGlobal[] = "<global-img>";

// The processor's first resize: the longest side to `longest`, the other in
// proportion (rounded down, then up to even), both below kMaxSide.
std::pair<int64_t, int64_t> FitLongest(int64_t w, int64_t h, int64_t longest) {
  double ratio = static_cast<double>(w) / static_cast<double>(h);
  if (w >= h) {
    w = longest;
    h = static_cast<int64_t>(static_cast<double>(w) / ratio);
    h += h % 2;
  } else {
    h = longest;
    w = static_cast<int64_t>(static_cast<double>(h) * ratio);
    w += w % 2;
  }
  w = std::max<int64_t>(w, 1);
  h = std::max<int64_t>(h, 1);
  ratio = static_cast<double>(w) / static_cast<double>(h);
  if (w >= h && w > kMaxSide) {
    w = kMaxSide;
    h = static_cast<int64_t>(kMaxSide / ratio);
  } else if (h > w && h > kMaxSide) {
    h = kMaxSide;
    w = static_cast<int64_t>(kMaxSide * ratio);
  }
  return {std::max<int64_t>(w, 1), std::max<int64_t>(h, 1)};
}

// The second resize: both sides up to whole tiles, the shorter from the
// longer one's rounded size.
std::pair<int64_t, int64_t> TileMultiple(int64_t w, int64_t h, int64_t tile) {
  const double ratio = static_cast<double>(w) / static_cast<double>(h);
  const auto up = [tile](double x) { return static_cast<int64_t>(std::ceil(x / tile)) * tile; };
  if (w >= h) {
    w = up(static_cast<double>(w));
    h = up(static_cast<double>(static_cast<int64_t>(static_cast<double>(w) / ratio)));
  } else {
    h = up(static_cast<double>(h));
    w = up(static_cast<double>(static_cast<int64_t>(static_cast<double>(h) * ratio)));
  }
  return {w, h};
}

// [3, S, S] from an S-wide crop of `rgb` (width w) at (left, top).
std::vector<uint8_t> Planar(const std::vector<uint8_t>& rgb, int64_t w, int64_t left, int64_t top,
                            int64_t s) {
  const size_t plane = static_cast<size_t>(s * s);
  std::vector<uint8_t> chw(plane * 3);
  for (int64_t y = 0; y < s; ++y) {
    for (int64_t x = 0; x < s; ++x) {
      const size_t from = static_cast<size_t>(((top + y) * w + left + x) * 3);
      for (size_t c = 0; c < 3; ++c)
        chw[c * plane + static_cast<size_t>(y * s + x)] = rgb[from + c];
    }
  }
  return chw;
}

}  // namespace

std::pair<int64_t, int64_t> TileGrid(int64_t width, int64_t height, const VisionMetadata& v) {
  if (v.split == 0) return {0, 0};
  auto [fw, fh] = FitLongest(width, height, v.longest_edge);
  auto [w, h] = TileMultiple(fw, fh, v.image_size);
  if (w > v.image_size || h > v.image_size) return {h / v.image_size, w / v.image_size};
  return {0, 0};
}

Result<ImageTiles> TileImage(const RgbImage& image, const VisionMetadata& v,
                             const std::string& name) {
  ImageTiles out;
  out.width = image.width;
  out.height = image.height;
  if (v.longest_edge <= 0) {
    auto px = ImagePixels(image, v, name);
    if (!px.ok()) return MakeError(px.error());
    out.tiles.push_back(std::move(*px));
    return out;
  }
  // As torchchat.vision_smolvlm.preprocess does with Pillow.
  if (!KnownResample(v.resample)) {
    return MakeError("this program resizes images with Pillow filter " +
                     std::to_string(v.resample) +
                     ", which the runners lack (they have Lanczos, bilinear, bicubic)");
  }
  const auto filter = static_cast<Resample>(v.resample);
  const int64_t s = v.image_size;
  auto [w, h] = FitLongest(image.width, image.height, v.longest_edge);
  std::vector<uint8_t> rgb = ResizeRgb(image.rgb, image.width, image.height, w, h, filter);
  if (v.split != 0) {
    auto [tw, th] = TileMultiple(w, h, s);
    rgb = ResizeRgb(rgb, w, h, tw, th, filter);
    w = tw;
    h = th;
    if (w > s || h > s) {
      for (int64_t top = 0; top + s <= h; top += s) {
        for (int64_t left = 0; left + s <= w; left += s) {
          out.tiles.push_back(Planar(rgb, w, left, top, s));
        }
      }
    }
  }
  out.tiles.push_back(Planar(ResizeRgb(rgb, w, h, s, s, filter), s, 0, 0, s));
  return out;
}

Result<void> CheckVision(const VisionMetadata& v, const std::string& model) {
  if (v.image_size <= 0) {
    return MakeError(model +
                     " has no vision encoder: images need a .pte or .pt2 exported from a "
                     "checkpoint with a vision tower, Gemma 3's or SmolVLM's (runner/README.md)");
  }
  return {};
}

Result<std::string> WithMarkers(const std::string& prompt, size_t n_images,
                                const tokenizers::Tokenizer& tokenizer, const VisionMetadata& v) {
  auto boi = TokenText(tokenizer, v.boi_id, "image marker");
  if (!boi.ok()) return MakeError(boi.error());
  const size_t have = Count(prompt, *boi);
  if (have == 0) {
    std::string markers;
    for (size_t i = 0; i < n_images; ++i) markers += *boi;
    return markers + prompt;
  }
  if (have != n_images) {
    return MakeError("the prompt has " + std::to_string(have) + " image markers (" + *boi +
                     ") for " + std::to_string(n_images) + " images");
  }
  return prompt;
}

Result<std::string> ExpandMarkers(const std::string& text, const tokenizers::Tokenizer& tokenizer,
                                  const VisionMetadata& v, const std::vector<ImageTiles>& images) {
  auto boi = TokenText(tokenizer, v.boi_id, "image marker");
  if (!boi.ok()) return MakeError(boi.error());
  auto soft = TokenText(tokenizer, v.image_id, "image soft");
  if (!soft.ok()) return MakeError(soft.error());
  std::string run;
  for (int64_t i = 0; i < v.image_tokens; ++i) run += *soft;
  std::string gemma;
  if (v.longest_edge <= 0) {
    auto eoi = TokenText(tokenizer, v.eoi_id, "end-of-image");
    if (!eoi.ok()) return MakeError(eoi.error());
    gemma = "\n\n" + *boi + run + *eoi + "\n\n";
  } else if (Count(text, *boi) != images.size()) {
    return MakeError("the prompt has " + std::to_string(Count(text, *boi)) + " image markers (" +
                     *boi + ") for " + std::to_string(images.size()) + " images");
  }
  // SmolVLM's placeholder (torchchat.vision_smolvlm.placeholder): a row of
  // tiles per line, each after its <row_r_col_c>, then the whole image.
  const auto smolvlm = [&](const ImageTiles& im) {
    const std::string whole = std::string(kFake) + kGlobal + run + kFake;
    auto [rows, cols] = TileGrid(im.width, im.height, v);
    if (rows == 0) return whole;
    std::string lines;
    for (int64_t r = 1; r <= rows; ++r) {
      for (int64_t c = 1; c <= cols; ++c) {
        lines += std::string(kFake) + "<row_" + std::to_string(r) + "_col_" + std::to_string(c) +
                 ">" + run;
      }
      lines += "\n";
    }
    return lines + "\n" + whole;
  };
  std::string out;
  size_t from = 0, n = 0;
  for (size_t at = text.find(*boi); at != std::string::npos; at = text.find(*boi, from)) {
    out.append(text, from, at - from);
    out += v.longest_edge <= 0 ? gemma : smolvlm(images[n]);
    ++n;
    from = at + boi->size();
  }
  out.append(text, from, std::string::npos);
  return out;
}

Result<std::vector<int64_t>> ImageRuns(const std::vector<int64_t>& ids, const VisionMetadata& v) {
  std::vector<int64_t> starts;
  size_t i = 0;
  while (i < ids.size()) {
    if (ids[i] != v.image_id) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < ids.size() && ids[j] == v.image_id) ++j;
    if (static_cast<int64_t>(j - i) != v.image_tokens) {
      return MakeError("an image takes " + std::to_string(v.image_tokens) +
                       " soft tokens; the prompt has " + std::to_string(j - i));
    }
    starts.push_back(static_cast<int64_t>(i));
    i = j;
  }
  return starts;
}

Result<std::vector<PromptImage>> PlaceImages(const std::vector<int64_t>& ids,
                                             const std::vector<ImageTiles>& images,
                                             const VisionMetadata& v) {
  auto starts = ImageRuns(ids, v);
  if (!starts.ok()) return MakeError(starts.error());
  size_t tiles = 0;
  for (const ImageTiles& im : images) tiles += im.tiles.size();
  if (starts->size() != tiles) {
    if (v.longest_edge > 0) {
      return MakeError("the prompt has places for " + std::to_string(starts->size()) +
                       " tiles, the images have " + std::to_string(tiles));
    }
    return MakeError("the prompt has places for " + std::to_string(starts->size()) +
                     " images, given " + std::to_string(images.size()));
  }
  std::vector<PromptImage> out;
  size_t r = 0;
  for (const ImageTiles& im : images) {
    for (const auto& tile : im.tiles) out.push_back({(*starts)[r++], tile});
  }
  return out;
}

Result<ImagePrompt> BuildImagePrompt(const std::string& prompt, const std::vector<RgbImage>& images,
                                     const std::vector<std::string>& names,
                                     const tokenizers::Tokenizer& tokenizer,
                                     const VisionMetadata& v, const std::string& model) {
  if (auto ok = CheckVision(v, model); !ok.ok()) return MakeError(ok.error());
  std::vector<ImageTiles> tiled;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string name = i < names.size() ? names[i] : "image " + std::to_string(i + 1);
    auto t = TileImage(images[i], v, name);
    if (!t.ok()) return MakeError(t.error());
    tiled.push_back(std::move(*t));
  }
  auto marked = WithMarkers(prompt, images.size(), tokenizer, v);
  if (!marked.ok()) return MakeError(marked.error());
  auto text = ExpandMarkers(*marked, tokenizer, v, tiled);
  if (!text.ok()) return MakeError(text.error());
  auto encoded = tokenizer.Encode(*text, tokenizer.add_bos());
  if (!encoded.ok()) return MakeError("cannot encode the prompt: " + encoded.error());
  ImagePrompt out;
  out.ids.assign(encoded->begin(), encoded->end());
  auto placed = PlaceImages(out.ids, tiled, v);
  if (!placed.ok()) return MakeError(placed.error());
  out.images = std::move(*placed);
  return out;
}

}  // namespace torchchat
