#include "runner/common/image.h"

#include <cctype>
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

Result<void> CheckVision(const VisionMetadata& v, const std::string& model) {
  if (v.image_size <= 0) {
    return MakeError(model +
                     " has no vision encoder: images need a .pte or .pt2 exported from a "
                     "checkpoint with Gemma 3's vision tower (runner/README.md)");
  }
  return {};
}

Result<std::string> WithMarkers(const std::string& prompt, size_t n_images,
                                const tokenizers::Tokenizer& tokenizer, const VisionMetadata& v) {
  auto boi = TokenText(tokenizer, v.boi_id, "begin-of-image");
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
                                  const VisionMetadata& v) {
  auto boi = TokenText(tokenizer, v.boi_id, "begin-of-image");
  if (!boi.ok()) return MakeError(boi.error());
  auto eoi = TokenText(tokenizer, v.eoi_id, "end-of-image");
  if (!eoi.ok()) return MakeError(eoi.error());
  auto soft = TokenText(tokenizer, v.image_id, "image soft");
  if (!soft.ok()) return MakeError(soft.error());
  std::string full = "\n\n" + *boi;
  for (int64_t i = 0; i < v.image_tokens; ++i) full += *soft;
  full += *eoi + "\n\n";
  std::string out;
  size_t from = 0;
  for (size_t at = text.find(*boi); at != std::string::npos; at = text.find(*boi, from)) {
    out.append(text, from, at - from);
    out += full;
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
                                             const std::vector<std::vector<uint8_t>>& pixels,
                                             const VisionMetadata& v) {
  auto starts = ImageRuns(ids, v);
  if (!starts.ok()) return MakeError(starts.error());
  if (starts->size() != pixels.size()) {
    return MakeError("the prompt has places for " + std::to_string(starts->size()) +
                     " images, given " + std::to_string(pixels.size()));
  }
  std::vector<PromptImage> out;
  for (size_t i = 0; i < pixels.size(); ++i) out.push_back({(*starts)[i], pixels[i]});
  return out;
}

Result<ImagePrompt> BuildImagePrompt(const std::string& prompt, const std::vector<RgbImage>& images,
                                     const std::vector<std::string>& names,
                                     const tokenizers::Tokenizer& tokenizer,
                                     const VisionMetadata& v, const std::string& model) {
  if (auto ok = CheckVision(v, model); !ok.ok()) return MakeError(ok.error());
  std::vector<std::vector<uint8_t>> pixels;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string name = i < names.size() ? names[i] : "image " + std::to_string(i + 1);
    auto p = ImagePixels(images[i], v, name);
    if (!p.ok()) return MakeError(p.error());
    pixels.push_back(std::move(*p));
  }
  auto marked = WithMarkers(prompt, images.size(), tokenizer, v);
  if (!marked.ok()) return MakeError(marked.error());
  auto text = ExpandMarkers(*marked, tokenizer, v);
  if (!text.ok()) return MakeError(text.error());
  auto encoded = tokenizer.Encode(*text, tokenizer.add_bos());
  if (!encoded.ok()) return MakeError("cannot encode the prompt: " + encoded.error());
  ImagePrompt out;
  out.ids.assign(encoded->begin(), encoded->end());
  auto placed = PlaceImages(out.ids, pixels, v);
  if (!placed.ok()) return MakeError(placed.error());
  out.images = std::move(*placed);
  return out;
}

}  // namespace torchchat
