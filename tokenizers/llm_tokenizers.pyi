"""Type stubs for the llm_tokenizers extension (tokenizers/bindings.cc)."""

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Literal

import numpy as np
import numpy.typing as npt

class TokenizerError(ValueError):
    """Raised with a one-line message for bad files, ids or arguments."""

class StreamDecoder:
    def push(self, id: int) -> str:
        """Adds one id; returns the text it completes (possibly '')."""
    def flush(self) -> str:
        """Returns held-back bytes of an unfinished character (as U+FFFD)."""

AllowedSpecial = Literal["all", "none"] | AbstractSet[str]

class Tokenizer:
    def encode(
        self,
        text: str | bytes,
        bos: bool = False,
        eos: bool = False,
        allowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Text (or raw bytes) to ids; special tokens not allowed are plain text."""
    def encode_batch(
        self,
        texts: Sequence[str | bytes],
        bos: bool = False,
        eos: bool = False,
        allowed_special: AllowedSpecial = "all",
        num_threads: int = 0,
    ) -> list[list[int]]:
        """Encodes many texts on num_threads threads (0: one per core)."""
    def decode(self, ids: Sequence[int]) -> str:
        """Ids to str; ill-formed UTF-8 becomes U+FFFD."""
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids to the raw bytes."""
    def stream_decoder(self) -> StreamDecoder:
        """A decoder that takes one id at a time."""
    def id_to_piece(self, id: int) -> bytes:
        """Vocabulary entry of an id (raw bytes for byte-level BPE)."""
    def piece_to_id(self, piece: str | bytes) -> int:
        """Id of a vocabulary entry or special token."""
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int:
        """The bos id, or -1."""
    @property
    def add_bos(self) -> bool:
        """Whether a prompt without a chat template starts with bos_id."""
    @property
    def eos_ids(self) -> list[int]:
        """Ids that end generation (may be empty)."""
    @property
    def chat_template(self) -> str:
        """The chat template shipped with the tokenizer, or ''."""
    @property
    def type(self) -> Literal["tiktoken", "hf", "sentencepiece", "llama2c"]: ...

def load(path: str) -> Tokenizer:
    """Loads a tokenizer file, detecting its type."""

def load_tiktoken(
    path: str,
    *,
    pat_str: str,
    special_tokens: dict[str, int] | Sequence[str] | None = None,
    bos: str | None = None,
    eos: Sequence[str] = (),
) -> Tokenizer:
    """A tiktoken file with tiktoken.Encoding's pat_str and special_tokens
    (name -> id, or names whose ids follow the base vocabulary); bos and eos
    name special tokens. `load` reads the same from a `<file>.json` sidecar:
    {"pat_str", "special_tokens", "bos", "eos"}."""

def from_gguf(path: str) -> Tokenizer:
    """Builds the tokenizer embedded in a GGUF file."""

def write_tokenizer_json(gguf_path: str, out_dir: str) -> None:
    """Writes out_dir/tokenizer.json and out_dir/tokenizer_config.json."""

class Rng:
    """The sampler's random stream: splitmix64 seed expansion, xorshift64*."""
    def __init__(self, seed: int) -> None: ...
    def next_u64(self) -> int: ...
    def next_float(self) -> float:
        """(next_u64() >> 40) * 2**-24, in [0, 1)."""

REPETITION_WINDOW: int  # recent ids the repetition penalty looks at

class Sampler:
    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
    ) -> None:
        """temperature <= 0 is greedy; 0 / 1.0 / 0.0 / 1.0 turn the others off."""
    def sample(
        self,
        logits: npt.NDArray[np.float32] | Sequence[float],
        recent: Sequence[int] = ...,
    ) -> int:
        """Next id from 1-D logits; `recent` ids get the repetition penalty."""
