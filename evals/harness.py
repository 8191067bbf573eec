"""lm-eval as the harness: our model as its `LM`, our tasks as its YAML.

lm-eval builds the requests from each task's YAML (prompt templates,
choices, gold answer), and computes acc and acc_norm from the
log-likelihoods `TorchchatLM` returns. The tasks read local JSONL files
that evals/data.py prepares; nothing is downloaded by lm-eval or datasets.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.scoring import BranchScore, Group, Scorer, check_fits, tokens_of, total_logprob

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from torchchat.tokenizer import Tokenizer

TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu")


def _quiet_lm_eval() -> None:
    # lm-eval and datasets log every step at INFO, and warn about things
    # that do not apply offline (no HF token, a model without a chat template).
    for name in ("lm_eval", "datasets", "evaluate", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _make_lm_class() -> type:
    """TorchchatLM, defined on first use: lm-eval takes seconds to import."""
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class TorchchatLM(LM):
        """lm-eval's LM over a Scorer and our tokenizer.

        Requests are tokenized as lm-eval's HFLM does (_encode_pair: the
        context's trailing spaces move to the continuation; the
        continuation's ids are those of context + continuation past the
        context's), truncated on the left to the context length, and
        grouped by question so the choices share their common prefix.
        """

        def __init__(
            self,
            scorer: Scorer,
            tokenizer: Tokenizer,
            progress: Callable[[int, int], Callable[[int], None]] | None = None,
        ):
            super().__init__()
            self.scorer = scorer
            self.tok = tokenizer
            self.progress = progress
            bos = tokenizer.bos_id
            self.bos = [bos] if tokenizer.add_bos and bos is not None else []
            # lm-eval's prefix_token_id: what an empty context conditions on.
            first = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_ids[0]
            self.prefix_token = int(first)

        # -- tokenizing ------------------------------------------------------------
        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            if not context:
                return [self.prefix_token], self.tok.encode(continuation, bos=False)
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            whole = self.bos + self.tok.encode(context + continuation, bos=False)
            ctx = self.bos + self.tok.encode(context, bos=False)
            return ctx, whole[len(ctx) :]

        def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int]:
            """(context + continuation, tokens scored), cut on the left to
            the model's positions (lm-eval's max_length + 1 rule)."""
            full = (ctx + cont)[-(self.scorer.max_seq_length + 1) :]
            return full, min(len(cont), len(full) - 1)

        # -- grouping -------------------------------------------------------------
        @staticmethod
        def _groups(seqs: Sequence[tuple[list[int], int]]) -> list[Group]:
            """One group for the sequences of a question: their common
            prefix, up to the first scored token of any."""
            cut = min(len(s) - n for s, n in seqs)
            first = seqs[0][0]
            for s, _ in seqs[1:]:
                k = 0
                while k < cut and s[k] == first[k]:
                    k += 1
                cut = k
            if cut == 0:
                return [Group(s[: len(s) - n], [s[len(s) - n :]]) for s, n in seqs]
            return [Group(first[:cut], [s[cut:] for s, _ in seqs])]

        def loglikelihood(
            self, requests: list[Instance], disable_tqdm: bool = False
        ) -> list[tuple[float, bool]]:
            by_doc: dict[Any, list[int]] = OrderedDict()
            for i, r in enumerate(requests):
                by_doc.setdefault((r.task_name, r.doc_id), []).append(i)
            seqs = [self._fit(*self._encode_pair(*r.args)) for r in requests]
            groups: list[Group] = []
            owners: list[list[int]] = []  # per group: the requests its branches answer
            for members in by_doc.values():
                gs = self._groups([seqs[i] for i in members])
                owners += [members] if len(gs) == 1 else [[i] for i in members]
                groups += gs
            for g in groups:
                check_fits(g, self.scorer.max_seq_length)
            scores = self._score(groups)
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            for g_scores, members in zip(scores, owners):
                for s, i in zip(g_scores, members):
                    out[i] = total_logprob(s, seqs[i][1])
            return [o for o in out if o is not None]  # each request is in one group

        def loglikelihood_rolling(
            self, requests: list[Instance], disable_tqdm: bool = False
        ) -> list[float]:
            groups, owner = [], []
            length = self.scorer.max_seq_length
            for i, r in enumerate(requests):
                ids = self.tok.encode(r.args[0], bos=False)
                for inp, pred in map(
                    make_disjoint_window,
                    get_rolling_token_windows(ids, self.prefix_token, length, 1),
                ):
                    full = inp + pred[-1:]
                    groups.append(Group(full[: len(full) - len(pred)], [full[-len(pred) :]]))
                    owner.append(i)
            totals = [0.0] * len(requests)
            for g_scores, i in zip(self._score(groups), owner):
                totals[i] += total_logprob(g_scores[0])[0]
            return totals

        def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
            raise NotImplementedError(
                "torchchat eval scores log-likelihoods; generation tasks are not supported"
            )

        def _score(self, groups: list[Group]) -> list[list[BranchScore]]:
            total = sum(tokens_of(g) for g in groups)
            cb = self.progress(total, len(groups)) if self.progress else None
            return self.scorer.score(groups, cb)

    return TorchchatLM


def make_lm(scorer: Scorer, tokenizer: Tokenizer, progress=None) -> Any:  # noqa: ANN001
    """Our model as an lm_eval.api.model.LM."""
    _quiet_lm_eval()
    return _make_lm_class()(scorer, tokenizer, progress)


def task_config(name: str, data_dir: Path) -> dict[str, Any]:
    """The task's YAML, its data files pointed at `data_dir`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(TASK_DIR / f"{name}.yaml")
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {k: str(data_dir / v) for k, v in files.items()}
    return cfg


def run_tasks(
    lm: Any,
    names: Sequence[str],
    data_dir: Path,
    limit: int | None = None,
    configs: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """lm-eval's simple_evaluate on our task YAMLs (or given configs):
    {task: {"acc": .., "acc_stderr": .., "acc_norm": .., "n": ..}}."""
    _quiet_lm_eval()
    import tempfile

    import datasets
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    configs = configs if configs is not None else [task_config(n, data_dir) for n in names]
    # datasets converts each JSON file to Arrow in its cache: a few seconds,
    # kept out of ~/.cache/huggingface and the read-only data directory.
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="torchchat-eval-") as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp)
        results = evaluator.simple_evaluate(
            model=lm,
            tasks=configs,
            limit=limit,
            task_manager=TaskManager(include_defaults=False),
            log_samples=False,
        )
    out: dict[str, dict[str, Any]] = {}
    for task, metrics in results["results"].items():
        row: dict[str, Any] = {"n": results["n-samples"][task]["effective"]}
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if filt == "none" and isinstance(value, (int, float)):
                row[metric] = float(value)
        out[task] = row
    return out
