/* generate: the smallest complete user of torchchat.h. Builds outside Bazel
 * against an unpacked torchchat tarball:
 *
 *   cc generate.c $(pkg-config --cflags --libs torchchat-et) -o generate
 *   ./generate model.pte "Once upon a time" 64
 *
 * Streams the text to stdout and the stats, as JSON, to stderr. */
#include <stdio.h>
#include <stdlib.h>

#include "torchchat.h"

static int print_piece(const char* text, size_t len, void* user_data) {
  (void)user_data;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* nonzero would stop generation here */
}

static int fail(const char* what) {
  fprintf(stderr, "generate: error: %s\n", what);
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: %s MODEL PROMPT [MAX_NEW_TOKENS]\n", argv[0]);
    return 2;
  }
  if (torchchat_api_version() / 1000 != TORCHCHAT_API_VERSION_MAJOR) {
    return fail("torchchat library of another major API version");
  }
  torchchat_runner* runner = NULL;
  if (torchchat_runner_create(argv[1], NULL, &runner) != TORCHCHAT_OK) {
    return fail(torchchat_last_error());
  }
  torchchat_generation_config config = torchchat_default_generation_config();
  if (argc == 4) config.max_new_tokens = atoll(argv[3]);
  torchchat_stats stats;
  const torchchat_status status =
      torchchat_generate(runner, argv[2], &config, print_piece, NULL, &stats);
  putchar('\n');
  if (status != TORCHCHAT_OK) {
    const int rc = fail(torchchat_last_error());
    torchchat_runner_free(runner);
    return rc;
  }
  char json[1024];
  size_t len = 0;
  if (torchchat_stats_json(&stats, json, sizeof(json), &len) == TORCHCHAT_OK) {
    fprintf(stderr, "%s\n", json);
  }
  torchchat_runner_free(runner);
  return 0;
}
