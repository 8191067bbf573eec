/* torchchat.h: the C API of torchchat's runner libraries.
 *
 * Two shared libraries implement it, with the same symbols:
 *   libtorchchat_et.so    runs ExecuTorch .pte programs (never libtorch)
 *   libtorchchat_aoti.so  runs AOTInductor .pt2 packages (never ExecuTorch)
 * An application links one of them. Both run torchchat's one generation
 * loop (TextLLMRunner), the shared tokenizers and the shared sampler, so
 * they produce the same tokens as et_run, aoti_run and torchchat's Python.
 *
 * Conventions
 *  - Every fallible call returns a torchchat_status; TORCHCHAT_OK is 0. On
 *    error, torchchat_last_error() gives a one-line message naming the
 *    problem. Nothing aborts on bad input and no C++ exception crosses
 *    this boundary.
 *  - Strings are NUL-terminated UTF-8. A prompt or message that is not
 *    valid UTF-8 is TORCHCHAT_ERROR_INVALID_ARGUMENT.
 *  - Handles are opaque. Each create or load function has a free function; freeing NULL
 *    does nothing, so `x_free(h); h = NULL; x_free(h);` is safe. Freeing a
 *    handle twice without setting it to NULL is undefined.
 *  - Output buffers: a call that writes text or ids into a caller's buffer
 *    stores the full length in *len (text without its NUL) and returns
 *    TORCHCHAT_ERROR_BUFFER_TOO_SMALL, writing nothing, when the buffer
 *    cannot hold it (text also needs room for the NUL). Pass NULL and 0 to
 *    ask for the length.
 *
 * Thread safety
 *  - A runner, and the chats made from it, may be used by one thread at a
 *    time; guard them with a mutex to share them. Different runners may
 *    run in different threads at once.
 *  - torchchat_runner_stop() may be called from any thread, at any time.
 *  - A tokenizer handle is immutable after loading: encode and decode may
 *    run on it from many threads at once.
 *  - torchchat_last_error() is per thread: it describes the last failed
 *    call made on the calling thread, and stays valid until that thread's
 *    next call into this API.
 *  - num_threads: libtorchchat_et.so uses ExecuTorch's process-wide thread
 *    pool, so the last runner created sets it for all; libtorchchat_aoti.so
 *    sets libtorch's intra-op threads, also process-wide.
 */
#ifndef TORCHCHAT_H_
#define TORCHCHAT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The API version: MAJOR changes break source or binary compatibility. */
#define TORCHCHAT_API_VERSION_MAJOR 1
#define TORCHCHAT_API_VERSION_MINOR 3
#define TORCHCHAT_API_VERSION (TORCHCHAT_API_VERSION_MAJOR * 1000 + TORCHCHAT_API_VERSION_MINOR)

#if defined(__GNUC__)
#define TORCHCHAT_EXPORT __attribute__((visibility("default")))
#else
#define TORCHCHAT_EXPORT
#endif

typedef enum torchchat_status {
  TORCHCHAT_OK = 0,
  /* A NULL handle or pointer, an option out of range, text that is not
   * valid UTF-8, a token id outside the vocabulary. */
  TORCHCHAT_ERROR_INVALID_ARGUMENT = 1,
  /* An artifact or tokenizer that is missing, corrupt, for another CPU, or
   * that does not belong with the other. */
  TORCHCHAT_ERROR_LOAD = 2,
  /* The prompt (or the conversation's newest turn) does not fit the
   * context. */
  TORCHCHAT_ERROR_CONTEXT = 3,
  /* The model failed while running. */
  TORCHCHAT_ERROR_RUNTIME = 4,
  /* See "Output buffers" above. */
  TORCHCHAT_ERROR_BUFFER_TOO_SMALL = 5
} torchchat_status;

/* Why a generation ended. */
typedef enum torchchat_stop_reason {
  TORCHCHAT_STOP_EOS = 0,            /* the model produced a stop token */
  TORCHCHAT_STOP_MAX_NEW_TOKENS = 1, /* max_new_tokens were generated */
  TORCHCHAT_STOP_CONTEXT = 2,        /* the context is full */
  TORCHCHAT_STOP_STOPPED = 3         /* the callback or torchchat_runner_stop */
} torchchat_stop_reason;

typedef struct torchchat_runner torchchat_runner;
typedef struct torchchat_chat torchchat_chat;
typedef struct torchchat_tokenizer torchchat_tokenizer;

/* TORCHCHAT_API_VERSION of the library actually loaded. */
TORCHCHAT_EXPORT int32_t torchchat_api_version(void);
/* "executorch" or "aoti". */
TORCHCHAT_EXPORT const char* torchchat_backend(void);
/* The calling thread's last error message, or "" after a success. */
TORCHCHAT_EXPORT const char* torchchat_last_error(void);
/* A constant name for a status, e.g. "TORCHCHAT_ERROR_CONTEXT". */
TORCHCHAT_EXPORT const char* torchchat_status_name(torchchat_status status);

/* ---- Logging (since 1.1) ---------------------------------------------- */

typedef enum torchchat_log_level {
  TORCHCHAT_LOG_DEBUG = 0,
  TORCHCHAT_LOG_INFO = 1,
  TORCHCHAT_LOG_ERROR = 2,
  TORCHCHAT_LOG_OFF = 3
} torchchat_log_level;

/* One log line of the runtime underneath, without a newline, e.g.
 * "mmap_data_loader.cpp:122] ..."; `line` is valid only during the call,
 * which may come from any thread the runtime runs. */
typedef void (*torchchat_log_callback)(torchchat_log_level level, const char* line,
                                       void* user_data);

/* The library is quiet by default (TORCHCHAT_LOG_OFF): it writes nothing
 * to stdout or stderr, and failures reach the caller only as a status and
 * torchchat_last_error(). From this call on, the runtime's lines at
 * `min_level` or above go to `callback`, or to stderr when it is NULL.
 * libtorchchat_et.so routes ExecuTorch's log here; libtorchchat_aoti.so has
 * nothing to route (libtorch logs only warnings, as TORCH_CPP_LOG_LEVEL
 * says). Any thread. A level outside the enum is
 * TORCHCHAT_ERROR_INVALID_ARGUMENT. */
TORCHCHAT_EXPORT torchchat_status torchchat_set_log(torchchat_log_level min_level,
                                                    torchchat_log_callback callback,
                                                    void* user_data);

/* ---- Runners ---------------------------------------------------------- */

typedef struct torchchat_runner_options {
  /* NULL: the tokenizer the artifact names, else tokenizer.json,
   * tokenizer.model or tokenizer.bin beside it. */
  const char* tokenizer_path;
  /* 0: the library's default (all cores). */
  int32_t num_threads;
  /* 0: the artifact's context length; smaller caps it (a chat then forgets
   * its oldest turns sooner). Larger is an error. */
  int64_t max_context;
} torchchat_runner_options;

TORCHCHAT_EXPORT torchchat_runner_options torchchat_runner_default_options(void);

/* Loads an artifact (.pte for libtorchchat_et.so, .pt2 for
 * libtorchchat_aoti.so) and its tokenizer. `options` may be NULL. On
 * success *out owns a new runner; on failure *out is NULL. */
TORCHCHAT_EXPORT torchchat_status torchchat_runner_create(const char* model_path,
                                                          const torchchat_runner_options* options,
                                                          torchchat_runner** out);
/* Chats made from the runner keep it alive until they are freed too. */
TORCHCHAT_EXPORT void torchchat_runner_free(torchchat_runner* runner);

/* Context length in tokens (the artifact's, or options.max_context), vocab
 * size; -1 for a NULL runner. */
TORCHCHAT_EXPORT int64_t torchchat_runner_max_context(const torchchat_runner* runner);
TORCHCHAT_EXPORT int64_t torchchat_runner_vocab_size(const torchchat_runner* runner);

/* A new handle on the runner's tokenizer; free it with
 * torchchat_tokenizer_free (the runner keeps its own). */
TORCHCHAT_EXPORT torchchat_status torchchat_runner_tokenizer(const torchchat_runner* runner,
                                                             torchchat_tokenizer** out);

/* Ends the generation running on `runner` after the token being streamed
 * (stop reason TORCHCHAT_STOP_STOPPED). Any thread. Each generate or chat
 * turn starts with the request cleared. */
TORCHCHAT_EXPORT void torchchat_runner_stop(torchchat_runner* runner);

/* Forgets the KV cache: the next call prefills from the first token. */
TORCHCHAT_EXPORT torchchat_status torchchat_runner_reset(torchchat_runner* runner);

/* ---- Generation ------------------------------------------------------- */

/* TORCHCHAT_SEED_RANDOM draws a seed from the OS. Any other value makes
 * sampling reproducible: the same seed and settings give the same tokens
 * here, in et_run/aoti_run (-s) and in torchchat's Python. */
#define TORCHCHAT_SEED_RANDOM UINT64_MAX

typedef struct torchchat_generation_config {
  int64_t max_new_tokens;   /* default 128; >= 1 */
  float temperature;        /* default 0: greedy */
  int32_t top_k;            /* default 0: off */
  float top_p;              /* default 1: off; (0, 1] */
  float min_p;              /* default 0: off; [0, 1] */
  float repetition_penalty; /* default 1: off; > 0, over the last 64 tokens */
  uint64_t seed;            /* default TORCHCHAT_SEED_RANDOM */
} torchchat_generation_config;

TORCHCHAT_EXPORT torchchat_generation_config torchchat_default_generation_config(void);

/* Called with each piece of generated text as it completes: never half a
 * UTF-8 character, never a stop token's text. `text` holds `len` bytes and
 * a NUL after them; it is valid only during the call. Return 0 to go on,
 * anything else to stop after this piece. */
typedef int (*torchchat_text_callback)(const char* text, size_t len, void* user_data);

/* Timing and counts of one generation, with ExecuTorch's Stats field names.
 * Times are milliseconds on a steady clock with an arbitrary epoch. */
typedef struct torchchat_stats {
  double model_load_start_ms;
  double model_load_end_ms;
  double inference_start_ms;
  double prompt_eval_end_ms;
  double first_token_ms;
  double inference_end_ms;
  int64_t num_prompt_tokens; /* tokens prefilled (not those reused from the cache) */
  int64_t num_generated_tokens;
  int64_t peak_rss_bytes;
  torchchat_stop_reason stop_reason;
} torchchat_stats;

/* Generates from `prompt` as given (no chat template; bos where the
 * tokenizer says prompts take one), as `et_run -m generate` does. A prompt
 * that extends what the KV cache holds prefills only the new part.
 * `config`, `callback` and `stats` may be NULL. */
TORCHCHAT_EXPORT torchchat_status torchchat_generate(torchchat_runner* runner, const char* prompt,
                                                     const torchchat_generation_config* config,
                                                     torchchat_text_callback callback,
                                                     void* user_data, torchchat_stats* stats);

/* ---- Images (since 1.2) ----------------------------------------------- */

/* An image as decoded pixels: `height` rows of `width` RGB triples, 8 bits
 * each, no padding. Decoding is the application's. Gemma 3's tower takes
 * torchchat_runner_image_size() square images, resized as its processor
 * does (bilinear); SmolVLM's takes any size and resizes and tiles it here,
 * as its processor does with Pillow (to the byte). */
typedef struct torchchat_image {
  const uint8_t* rgb;
  int32_t width;
  int32_t height;
} torchchat_image;

/* The side of the square images (SmolVLM: tiles) the program's vision
 * encoder takes; 0 for a program without one, -1 for NULL. */
TORCHCHAT_EXPORT int64_t torchchat_runner_image_size(const torchchat_runner* runner);

/* torchchat_generate with images, as `et_run --image` runs them: each
 * image's soft tokens go where the prompt writes the model's image marker
 * (Gemma 3's "<start_of_image>", SmolVLM's "<image>"), one per image, or all before the text
 * when it writes none. The KV cache is reused as for text, an image
 * counting as cached only where the same pixels sat at the same place.
 * An image of the wrong size, a marker count that differs from n_images,
 * or a program without a vision encoder is
 * TORCHCHAT_ERROR_INVALID_ARGUMENT. */
TORCHCHAT_EXPORT torchchat_status torchchat_generate_with_images(
    torchchat_runner* runner, const char* prompt, const torchchat_image* images, size_t n_images,
    const torchchat_generation_config* config, torchchat_text_callback callback, void* user_data,
    torchchat_stats* stats);

/* The stats as one JSON object (the file et_run's --stats-json writes). */
TORCHCHAT_EXPORT torchchat_status torchchat_stats_json(const torchchat_stats* stats, char* buf,
                                                       size_t cap, size_t* len);

/* ---- Chat ------------------------------------------------------------- */

/* A conversation rendered with the tokenizer's chat template. Each turn
 * prefills only the new turn: the KV cache keeps the conversation between
 * turns. When the context fills, the oldest exchange is forgotten (never
 * the system prompt). `system_prompt` may be NULL. A tokenizer without a
 * chat template is TORCHCHAT_ERROR_LOAD. */
TORCHCHAT_EXPORT torchchat_status torchchat_chat_create(torchchat_runner* runner,
                                                        const char* system_prompt,
                                                        torchchat_chat** out);
TORCHCHAT_EXPORT void torchchat_chat_free(torchchat_chat* chat);

/* One exchange: streams the reply to `callback`. On error the conversation
 * is left as it was. A stopped reply is kept, as far as it got. */
TORCHCHAT_EXPORT torchchat_status torchchat_chat_turn(torchchat_chat* chat, const char* user_text,
                                                      const torchchat_generation_config* config,
                                                      torchchat_text_callback callback,
                                                      void* user_data, torchchat_stats* stats);

/* torchchat_chat_turn with images (since 1.3): they go with this user
 * message, before its text, as content parts ({"type": "image"}) that the
 * chat template places (Gemma 3's writes "<start_of_image>"), each expanded
 * to the image's soft tokens, as torchchat's Python chat does. The
 * conversation keeps them: later turns send them again and reuse their KV
 * cache. An image of the wrong size, a program without a vision encoder,
 * or a message whose own markers leave the images' places wrong is
 * TORCHCHAT_ERROR_INVALID_ARGUMENT, and the conversation is left as it
 * was. n_images 0 is torchchat_chat_turn. */
TORCHCHAT_EXPORT torchchat_status torchchat_chat_turn_with_images(
    torchchat_chat* chat, const char* user_text, const torchchat_image* images, size_t n_images,
    const torchchat_generation_config* config, torchchat_text_callback callback, void* user_data,
    torchchat_stats* stats);

/* Back to only the system prompt. */
TORCHCHAT_EXPORT torchchat_status torchchat_chat_reset(torchchat_chat* chat);

/* Exchanges the last turn forgot to fit the context; -1 for NULL. */
TORCHCHAT_EXPORT int32_t torchchat_chat_dropped_last_turn(const torchchat_chat* chat);

/* ---- Tokenizer -------------------------------------------------------- */

/* Any file torchchat reads: tokenizer.json, a SentencePiece model, a
 * tiktoken file, llama2c's tokenizer.bin, or a GGUF's embedded tokenizer. */
TORCHCHAT_EXPORT torchchat_status torchchat_tokenizer_load(const char* path,
                                                           torchchat_tokenizer** out);
TORCHCHAT_EXPORT void torchchat_tokenizer_free(torchchat_tokenizer* tokenizer);

/* `len` bytes of UTF-8 text to ids; add_bos != 0 prepends bos (when the
 * vocabulary has one). Special tokens' text is read as those tokens. */
TORCHCHAT_EXPORT torchchat_status torchchat_tokenizer_encode(const torchchat_tokenizer* tokenizer,
                                                             const char* text, size_t len,
                                                             int add_bos, int32_t* ids, size_t cap,
                                                             size_t* n_ids);

/* Ids to bytes. Usually UTF-8, but a byte-level vocabulary can produce any
 * bytes; the result is NUL-terminated and *len excludes the NUL. */
TORCHCHAT_EXPORT torchchat_status torchchat_tokenizer_decode(const torchchat_tokenizer* tokenizer,
                                                             const int32_t* ids, size_t n_ids,
                                                             char* buf, size_t cap, size_t* len);

/* -1 for NULL, or a vocabulary without bos. */
TORCHCHAT_EXPORT int32_t torchchat_tokenizer_vocab_size(const torchchat_tokenizer* tokenizer);
TORCHCHAT_EXPORT int32_t torchchat_tokenizer_bos_id(const torchchat_tokenizer* tokenizer);
TORCHCHAT_EXPORT torchchat_status torchchat_tokenizer_eos_ids(const torchchat_tokenizer* tokenizer,
                                                              int32_t* ids, size_t cap,
                                                              size_t* n_ids);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TORCHCHAT_H_ */
