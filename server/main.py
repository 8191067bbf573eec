"""`torchchat server`: load a model as `generate` does and serve OpenAI's API.

Takes generate's model flags (an alias, --gguf-path, --checkpoint-path,
--quantize, --pte-path, --aoti-package-path, ...). Their sampling flags
(--temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed,
--max-new-tokens, --system-prompt) become the defaults for request fields
a client leaves out. Errors a user can cause print one line and exit 1.

With --pipeline-parallel N the model's layers are split across N ranks
(torchchat.pipeline): rank 0 serves HTTP over a SlotPipeline, batched as
the eager model is, and the other ranks run their stages until rank 0
stops them. Without torchrun, the other ranks start here, on this host.
Under torchrun with restarts left, a lost pipeline ends the server (after
its requests in flight got their 503), so that torchrun rebuilds it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchchat import loading, pipeline, speculate_flags
from torchchat.errors import EXIT_ERROR, EXIT_INTERRUPT, UserError
from torchchat.sampling import add_sampling_args

if TYPE_CHECKING:
    from server.common import Config
    from server.engine import Engine
    from torchchat.generate import Draft

DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchchat server", description=__doc__.splitlines()[0])
    loading.add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--parallel", type=int, default=4, help="slots: generations that run batched together"
    )
    p.add_argument(
        "--max-queue", type=int, default=64, help="generations that may wait for a slot (then 429)"
    )
    p.add_argument(
        "--api-key",
        help="require Authorization: Bearer KEY on /v1/ routes and llama-server's",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit")
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        help="largest max_tokens a request may ask for (default: the context length)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=128,
        help="prompt tokens per batched step: the longest a prompt stalls other streams",
    )
    p.add_argument("--model-id", help="the model name clients send (default: from the flags)")
    # Per slot, beside the others' decode tokens in the same batched step.
    speculate_flags.add_args(p)
    pipeline.add_args(p)
    p.add_argument(
        "--allow-image-urls",
        action="store_true",
        help="fetch http(s) image URLs in image_url parts (10 s and --max-image-bytes each); "
        "by default only data: URLs are taken",
    )
    p.add_argument("--max-images", type=int, default=4, help="image parts a request may hold")
    p.add_argument(
        "--max-image-bytes", type=int, default=20 << 20, help="largest image a part may hold"
    )
    p.add_argument(
        "--pooling",
        choices=("mean", "last", "cls"),
        help="/v1/embeddings: pool the last hidden states by their mean, the last token's or "
        "the first's (default: what the checkpoint names, else mean)",
    )
    return p


def model_id(args: argparse.Namespace) -> str:
    from torchchat import registry

    path = args.aoti_package_path or args.pte_path or args.gguf_path or args.checkpoint_path
    if path:
        return Path(path).stem if Path(path).suffix else Path(path).name
    return args.model or registry.DEFAULT_MODEL


def build(args: argparse.Namespace) -> tuple[Engine, Config]:
    """(engine, config) for the flags; raises UserError for bad ones."""
    from server.engine import batched_engine, eager_engine, serial_engine
    from torchchat.artifacts import ExportedModel, Pt2Model
    from torchchat.model import Model

    for name in ("parallel", "max_queue", "max_body_bytes", "prefill_chunk", "max_image_bytes"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    # As generate, the model is compiled on first use (AOTInductor, cached),
    # here with a cache row per slot, so that it is batched like the eager
    # SlotModel; `--compile none` serves the eager SlotModel.
    options = loading.options_from_args(args)
    if options.pipeline > 1:
        return _pipeline_engine(args, options)
    mode = loading.compile_mode(options)
    if mode == "torch":
        print(
            "torchchat server: --compile torch does not apply to the batched forward; "
            "serving the eager model",
            file=sys.stderr,
        )
        mode = "none"
    if mode == "aoti" and args.compile == "auto" and loading.sees_images(options):
        # The compiled package takes token ids only; images enter as embeddings.
        print(
            "torchchat server: this model sees images; serving the eager model "
            "(--compile aoti serves text only, faster)",
            file=sys.stderr,
        )
        mode = "none"
    speculate = speculate_flags.mode(args)
    k, adapt = speculate_flags.draft_k(args) if speculate else (0, None)
    # A package verifies a draft through its `last` input, which only one
    # exported with slots has; a batch-1 one gives the last logits only.
    slots = args.parallel if mode == "aoti" and (args.parallel > 1 or speculate) else 0
    loaded = loading.load(replace(options, compile=mode, slots=slots))
    model = loaded.ensure_model()  # compiles now on a cache miss, not at the first request
    if isinstance(model, Model):
        engine = eager_engine(
            model, loaded.tokenizer, args.parallel, args.max_queue, args.prefill_chunk
        )
        engine.vision = loaded.vision
        vocab = model.config.vocab_size
    elif isinstance(model, Pt2Model) and model.n_slots:  # a .pt2 exported with --slots
        n = model.n_slots
        if args.parallel > n:
            print(
                f"torchchat server: {args.aoti_package_path} has {n} slots; serving {n} "
                "requests at a time",
                file=sys.stderr,
            )
        engine = batched_engine(
            model,
            min(args.parallel, n),
            loaded.tokenizer,
            args.max_queue,
            args.prefill_chunk,
        )
        vocab = model.vocab_size
    else:
        # Anything else the loader gives is an exported artifact (.pte,
        # batch-1 .pt2) with the metadata it was exported with.
        assert isinstance(model, ExportedModel)
        if args.parallel != 1:
            print(
                f"torchchat server: {type(loaded.model).__name__} has a batch-1 cache; "
                "serving one request at a time",
                file=sys.stderr,
            )
        engine = serial_engine(model, loaded.tokenizer, args.max_queue)
        vocab = model.vocab_size
    if speculate:
        engine.speculate(_drafters(args, loaded, speculate, engine, mode), k, adapt)
    return engine, _config(args, engine, loaded, vocab)


def _pipeline_engine(
    args: argparse.Namespace, options: loading.LoadOptions
) -> tuple[Engine, Config]:
    """Rank 0 of a pipeline: --parallel slots over every stage, batched by
    one Batcher as the eager model is (each step a message through the
    ranks)."""
    from server.engine import batched_engine

    if speculate_flags.mode(args):
        raise UserError("--speculate and --draft run in one process; drop --pipeline-parallel")
    loaded = loading.load(options)
    pipe = loaded.ensure_model()
    assert isinstance(pipe, pipeline.Pipeline), "rank 0 loads the Pipeline"
    slots = pipeline.SlotPipeline(pipe, args.parallel)
    engine = batched_engine(
        slots, args.parallel, loaded.tokenizer, args.max_queue, args.prefill_chunk
    )
    return engine, _config(args, engine, loaded, slots.vocab_size)


def _config(args: argparse.Namespace, engine: Engine, loaded: loading.Loaded, vocab: int) -> Config:
    from server.common import Config
    from server.embeddings import model_pooling
    from torchchat import grammar

    grammar.warm(loaded.tokenizer, vocab)  # response_format's token table
    seq = engine.max_seq_length
    cap = args.max_tokens_cap or seq
    if cap < 1:
        raise UserError("--max-tokens-cap must be positive")
    config = Config(
        model_id=args.model_id or model_id(args),
        max_seq_length=seq,
        vocab_size=vocab,
        max_tokens_cap=cap,
        default_max_tokens=min(args.max_new_tokens, cap),
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        system_prompt=args.system_prompt,
        pooling=args.pooling or model_pooling(loaded.info.get("checkpoint")) or "mean",
        info=loaded.info,
        quiet=args.quiet,
        allow_image_urls=args.allow_image_urls,
        max_images=args.max_images,
        max_image_bytes=args.max_image_bytes,
        speculative=_speculative(args),
    )
    # The CLI's sampling defaults must be valid before the first request.
    try:
        from server.engine import Params

        Params(
            1, args.temperature, args.top_p, args.top_k, args.min_p, args.repetition_penalty
        ).sampler()
    except ValueError as e:
        raise UserError(str(e)) from e
    return config


def _speculative(args: argparse.Namespace) -> dict[str, object] | None:
    """--speculate's settings as /props shows them."""
    speculate = speculate_flags.mode(args)
    if not speculate:
        return None
    from torchchat.speculate import AdaptiveK, PromptLookup

    k, adapt = speculate_flags.draft_k(args)
    auto = isinstance(adapt, AdaptiveK)
    lo, hi = (adapt.lo, adapt.hi) if isinstance(adapt, AdaptiveK) else (k, k)
    return {
        "mode": speculate,
        "draft_model": args.draft,
        "draft_k": "auto" if auto else k,
        "n_min": lo,
        "n_max": hi,
        "ngram_max": PromptLookup().max_ngram if speculate == "prompt-lookup" else None,
    }


def _drafters(
    args: argparse.Namespace, loaded: loading.Loaded, speculate: str, engine: Engine, mode: str
) -> list[Draft]:
    """A drafter per slot: prompt lookup, or --draft's model with a cache row
    per slot (loaded as the model is, batched by a Batcher of its own)."""
    from server.engine import sequences
    from torchchat.speculate import DraftModel, PromptLookup

    n = engine.n_slots
    if engine.batcher is None:
        # A batch-1 artifact verifies with forward_all, which only one
        # exported with --full-logits has.
        speculate_flags.check_verifies(loaded.model)
    if speculate == "prompt-lookup":
        return [PromptLookup() for _ in range(n)]
    draft = speculate_flags.load_draft(args, loaded, compile=mode, slots=n if mode == "aoti" else 0)
    try:
        views = sequences(draft.ensure_model(), n, args.prefill_chunk)
    except ValueError as e:
        raise UserError(f"--draft {args.draft}: {e}") from None
    vocab = speculate_flags.vocab_size(loaded.model)
    return [DraftModel(v, vocab) for v in views]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    if (args.pipeline_parallel or 0) > 1:
        return _pipelined(args, argv)
    return serve(args)


# A pipeline server that torchrun will restart, once it is lost: how long it
# keeps answering 503 (the requests in flight end with their error), then
# how long uvicorn may take to close the connections left.
DRAIN_S = 1.0
CLOSE_S = 5.0


def serve(args: argparse.Namespace, restarts: int = 0) -> int:
    """Builds the engine and serves HTTP until interrupted. With `restarts`
    (a pipeline rank 0 under torchrun --max-restarts), an engine that can
    no longer serve ends the server with an error, so that torchrun
    restarts every rank and the pipeline comes back."""
    expected = loading.expected_errors()
    try:
        engine, config = build(args)
    except expected as e:
        print(f"torchchat server: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    import uvicorn

    from server.app import create_app

    app = create_app(engine, config)
    print(
        f"torchchat server: {config.model_id} on http://{args.host}:{args.port}/v1 "
        f"({engine.n_slots} slots)",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=int(CLOSE_S),
        )
    )
    lost: list[str] = []
    if restarts:
        threading.Thread(target=_end_when_lost, args=(engine, server, lost), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    if lost:
        print(
            f"torchchat server: error: {lost[0]}; exiting so that torchrun restarts every rank "
            f"({restarts} restart{'s' if restarts > 1 else ''} left)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ERROR
    return 0


def _end_when_lost(engine: Engine, server: Any, lost: list[str]) -> None:
    """Stops `server` (a uvicorn.Server) DRAIN_S after `engine` says it
    cannot serve (its pipeline lost), saying why in `lost`."""
    while not server.should_exit:
        why = engine.problem()
        if why is not None:
            lost.append(why)
            time.sleep(DRAIN_S)
            server.should_exit = True
            return
        time.sleep(0.2)


def _rank_entry(argv: list[str]) -> None:
    """A rank that pipeline.launch_local started: the same command line."""
    sys.exit(main(argv))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _pipelined(args: argparse.Namespace, argv: list[str]) -> int:
    """The server with the model split across ranks: rank 0 serves, the
    others run their stages until rank 0 stops them, which it does however
    it ends (an error, Ctrl-C, SIGTERM)."""
    expected = loading.expected_errors()
    procs: list = []
    try:
        if pipeline.under_launcher():
            rank = pipeline.join(args.pipeline_parallel)
        else:
            rank, procs = pipeline.launch_local(
                args.pipeline_parallel, functools.partial(_rank_entry, argv)
            )
        if not rank.first:
            # Rank 0 decides when to stop: a terminal's Ctrl-C reaches every
            # rank it started, and this one waits for rank 0's word.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            loading.serve_stage(loading.options_from_args(args))
            return 0
    except expected as e:
        print(f"torchchat server: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    # uvicorn re-raises the SIGTERM it caught once it has stopped: as
    # Ctrl-C, so that the ranks are stopped below instead of the process
    # dying at once.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return serve(args, pipeline.restarts_left())
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    finally:
        reports = pipeline.shutdown(rank, procs)
        if not args.quiet:
            for line in pipeline.describe(reports):
                print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
