// tile_ppm IMAGE.ppm TILE LONGEST_EDGE SPLIT RESAMPLE: the image's tiles as
// TileImage cuts them for a SmolVLM program, [3, TILE, TILE] each, raw on
// stdout; //export:vision_smolvlm_test holds them to Pillow's, byte for byte.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runner/common/image.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: tile_ppm IMAGE.ppm TILE LONGEST_EDGE SPLIT RESAMPLE\n");
    return 2;
  }
  auto img = torchchat::ReadPpm(argv[1]);
  if (!img.ok()) {
    std::fprintf(stderr, "tile_ppm: error: %s\n", img.error().c_str());
    return 1;
  }
  torchchat::VisionMetadata v;
  v.image_size = std::atoll(argv[2]);
  v.longest_edge = std::atoll(argv[3]);
  v.split = std::atoll(argv[4]);
  v.resample = std::atoll(argv[5]);
  auto tiles = torchchat::TileImage(*img, v, argv[1]);
  if (!tiles.ok()) {
    std::fprintf(stderr, "tile_ppm: error: %s\n", tiles.error().c_str());
    return 1;
  }
  for (const auto& t : tiles->tiles) std::fwrite(t.data(), 1, t.size(), stdout);
  return 0;
}
