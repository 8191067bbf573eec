"""runner/c_api/torchchat.h through ctypes, for tests: its status codes,
structs and callbacks, and a library opened with every function typed."""

import ctypes

OK, INVALID, LOAD, CONTEXT, RUNTIME, TOO_SMALL = range(6)
STOP_EOS, STOP_MAX, STOP_CONTEXT, STOP_STOPPED = range(4)

CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
LOG_INFO = 1
NO_CALLBACK = CALLBACK()  # NULL


class Options(ctypes.Structure):
    _fields_ = [
        ("tokenizer_path", ctypes.c_char_p),
        ("num_threads", ctypes.c_int32),
        ("max_context", ctypes.c_int64),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("max_new_tokens", ctypes.c_int64),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repetition_penalty", ctypes.c_float),
        ("seed", ctypes.c_uint64),
    ]


class Stats(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_double)
        for n in (
            "model_load_start_ms",
            "model_load_end_ms",
            "inference_start_ms",
            "prompt_eval_end_ms",
            "first_token_ms",
            "inference_end_ms",
        )
    ] + [
        ("num_prompt_tokens", ctypes.c_int64),
        ("num_generated_tokens", ctypes.c_int64),
        ("peak_rss_bytes", ctypes.c_int64),
        ("stop_reason", ctypes.c_int),
    ]


class Image(ctypes.Structure):
    _fields_ = [("rgb", ctypes.c_char_p), ("width", ctypes.c_int32), ("height", ctypes.c_int32)]


def load(path: str) -> ctypes.CDLL:
    """The library at `path`, each of the header's functions typed."""
    # RTLD_GLOBAL: a 4-bit .pt2 resolves the q4 shim in this library by name.
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    p, vp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    i32p, szp = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_size_t)
    sigs = {
        "torchchat_api_version": (ctypes.c_int32, []),
        "torchchat_backend": (ctypes.c_char_p, []),
        "torchchat_last_error": (ctypes.c_char_p, []),
        "torchchat_set_log": (ctypes.c_int, [ctypes.c_int, LOG_CALLBACK, p]),
        "torchchat_runner_default_options": (Options, []),
        "torchchat_runner_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(Options), vp]),
        "torchchat_runner_free": (None, [p]),
        "torchchat_runner_max_context": (ctypes.c_int64, [p]),
        "torchchat_runner_tokenizer": (ctypes.c_int, [p, vp]),
        "torchchat_runner_image_size": (ctypes.c_int64, [p]),
        "torchchat_generate_with_images": (
            ctypes.c_int,
            [
                p,
                ctypes.c_char_p,
                p,
                ctypes.c_size_t,
                ctypes.POINTER(Config),
                CALLBACK,
                p,
                ctypes.POINTER(Stats),
            ],
        ),
        "torchchat_default_generation_config": (Config, []),
        "torchchat_generate": (
            ctypes.c_int,
            [p, ctypes.c_char_p, ctypes.POINTER(Config), CALLBACK, p, ctypes.POINTER(Stats)],
        ),
        "torchchat_chat_create": (ctypes.c_int, [p, ctypes.c_char_p, vp]),
        "torchchat_chat_turn": (
            ctypes.c_int,
            [p, ctypes.c_char_p, ctypes.POINTER(Config), CALLBACK, p, ctypes.POINTER(Stats)],
        ),
        "torchchat_chat_turn_with_images": (
            ctypes.c_int,
            [
                p,
                ctypes.c_char_p,
                p,
                ctypes.c_size_t,
                ctypes.POINTER(Config),
                CALLBACK,
                p,
                ctypes.POINTER(Stats),
            ],
        ),
        "torchchat_chat_free": (None, [p]),
        "torchchat_chat_dropped_last_turn": (ctypes.c_int32, [p]),
        "torchchat_tokenizer_encode": (
            ctypes.c_int,
            [p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, i32p, ctypes.c_size_t, szp],
        ),
        "torchchat_tokenizer_decode": (
            ctypes.c_int,
            [p, i32p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, szp],
        ),
        "torchchat_tokenizer_free": (None, [p]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib
