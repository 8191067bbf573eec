"""The text the parity tests and the benchmark run on.

Real text from the machine (license texts, Python sources, the
sentencepiece sdist's botchan.txt) plus the edge cases tokenizers get wrong:
emoji ZWJ sequences, CJK, combining marks, RTL, whitespace runs and tabs,
CRLF, special-token text inside normal text, invalid UTF-8 (replaced by
U+FFFD for the references, which only take str), the empty string and a
1 MB single line. And a multilingual text: Faker's lorem word lists in 26
languages (a locked wheel, so the text is the same on every machine), from
which SentencePiece models are also trained here.
"""

import glob
import io
import os
import sysconfig

EDGE_CASES = [
    "",
    "a",
    " ",
    "\n",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👩🏽‍💻 coder, 🇯🇵 🤷‍♂️",
    "日本語のテキスト、中文文本。한국어 텍스트 ｆｕｌｌｗｉｄｔｈ",
    "e\u0301 a\u0300\u0323 Z\u0324\u0354\u0367\u0311o\u0319\u0314 ä\u0356\u032d",
    "שלום עולם، مرحبا بالعالم ‏(rtl)‎ 123",
    "a    b\t\t\tc \t \n\n\n   d     \n",
    "    indented code\n\tif x:\n\t\treturn  y  \n",
    "\u00a0\u2003 unicode spaces \u3000x\u2028y\u2029z \u0085",
    "line1\r\nline2\r\n\r\n  \r\n",
    "<|begin_of_text|>hello<|eot_id|> <|start_header_id|>user<|end_header_id|>\n\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|reserved_special_token_5|>x",
    b"abc\xff\xfe def \xc3\x28 \xe2\x82 end\xf0\x9f".decode("utf-8", "replace"),
    "don't I'M you'RE they've we'll he'd it's",
    "1234567890 3.14159 1,000,000 ١٢٣ ۴۵۶ 二十",
    "!!!??? ... --- *** ``` ~~~ $$$ %%% @@@",
    "   ",
    "\t",
    "x" + " " * 50 + "y",
]


def sentencepiece_sdist():
    """The sentencepiece source tree's test models and botchan.txt, which the
    tests take as data from @sentencepiece (or $SENTENCEPIECE_SRC)."""
    env = os.environ.get("SENTENCEPIECE_SRC")
    if env:
        return env
    # Tests get TEST_SRCDIR; `bazel run` may set neither variable, so also
    # try the runfiles tree this file sits in (<runfiles>/<repo>/tokenizers/).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for runfiles in (os.environ.get("TEST_SRCDIR"), os.environ.get("RUNFILES_DIR"), here):
        for name in ("sentencepiece~", "sentencepiece"):
            d = os.path.join(runfiles or "", name)
            if runfiles and os.path.exists(os.path.join(d, "data", "botchan.txt")):
                return d
    raise FileNotFoundError(
        "sentencepiece's test data is not in the runfiles; depend on "
        "@sentencepiece//:data/botchan.txt or set SENTENCEPIECE_SRC"
    )


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def machine_text(limit=1_400_000):
    """License texts and Python sources, in a fixed order, up to `limit` chars."""
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    stdlib = sysconfig.get_paths()["stdlib"]
    paths += sorted(glob.glob(os.path.join(stdlib, "*.py")))
    out, total = [], 0
    for p in paths:
        t = _read(p)
        if not t:
            continue
        out.append(t)
        total += len(t)
        if total >= limit:
            break
    return "".join(out)[:limit]


def lines(text):
    return text.splitlines(keepends=True)


def one_mb_line(text):
    """A single 1 MB line made of real text."""
    flat = text.replace("\r", " ").replace("\n", " ")
    while len(flat.encode()) < 1_000_000:
        flat += flat
    return flat.encode()[:1_000_000].decode("utf-8", "ignore")


# Faker locales whose lorem provider has its own word list: 25 languages,
# Chinese in both scripts, and Latin (Faker's default list) added below.
MULTILINGUAL_LOCALES = (
    "ar_AA az_AZ bn_BD cs_CZ da_DK de_DE el_GR en_US es_ES fa_IR fil_PH fr_FR he_IL "
    "hy_AM it_IT ja_JP mk_MK nl_NL pl_PL ru_RU th_TH uk_UA vi_VN zh_CN zh_TW"
).split()


def multilingual_text(paragraphs_per_language=150):
    """Lorem paragraphs (one per line), language after language: about 1 MB
    of UTF-8 in 26 languages (Latin, Cyrillic, Greek, Arabic, Hebrew,
    Armenian, Bengali, Thai and CJK scripts). Deterministic for the locked
    Faker release."""
    from faker import Faker
    from faker.providers.lorem.la import Provider as Latin

    out = []
    for locale in MULTILINGUAL_LOCALES + ["la"]:
        fake = Faker("en_US" if locale == "la" else locale)
        fake.seed_instance(0)
        words = Latin.word_list if locale == "la" else None
        for _ in range(paragraphs_per_language):
            out.append(fake.paragraph(nb_sentences=6, ext_word_list=words) + "\n")
    return "".join(out)


def train_sentencepiece(text, model_type, vocab_size=8000):
    """A SentencePiece model (serialized ModelProto) trained on `text` by the
    reference library, with byte fallback and one user-defined symbol, so
    that unknown characters become byte pieces. Seconds on 1 MB."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=buf,
        model_type=model_type,
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.9995,
        user_defined_symbols=["<tag>"],
        num_threads=2,
        minloglevel=2,
    )
    return buf.getvalue()
