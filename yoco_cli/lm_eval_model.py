"""The ``yoco`` model of lm-evaluation-harness: every model ``load_model`` knows, behind lm-eval's API.

``@register_model("yoco")`` on a ``TemplateLM`` subclass:

* ``loglikelihood``: the full forward ``model(ids)`` over context + continuation (cut from the left
  to ``max_length`` + 1 tokens), requests sorted by length and batched with right padding (safe for
  causal models: later positions never change earlier logits).
* ``loglikelihood_rolling``: disjoint windows of ``max_length`` tokens (lm-eval's
  ``get_rolling_token_windows`` + ``make_disjoint_window``), scored as above and summed.
* ``generate_until``: greedy through the model's ``prefill`` + ``decode``
  (``yoco_core.generation``), stop strings honoured; rows with the same prompt length and
  generation settings go together in one batch.

lm-eval 0.4.13 finds models only in its own registry, so its CLI knows ``yoco`` only once this
module is imported; the package also declares the entry point ``lm_eval.models: yoco`` (pyproject),
which lm-eval's next release reads by itself. Run lm-eval's own command through this module, which
registers the model, adds the project's ``tasks/`` folder and the local byte tokenizer, then hands
over to lm-eval's CLI unchanged::

    python -m yoco_cli.lm_eval_model --model yoco --model_args pretrained=yoco-tiny --tasks yoco_passkey --limit 4

Model args: ``pretrained`` (preset, path, ``hf:PATH`` or ``unilm:PATH``; default yoco-tiny), ``device``,
``dtype`` (auto, fp32, bf16, fp16), ``batch_size``, ``max_length`` (default: the model's
``max_seq_len``), ``max_gen_toks`` (default 256), ``chunk_size`` (prefill chunking),
``add_bos_token`` (default: as the model's tokenizer adds it, the same BOS as ``yoco needle``),
``tokenizer`` (``bytes`` or a PATH: a folder, a ``tokenizer.json``, a ``.tiktoken`` rank file, used
instead of the model's own; also what lm-eval's synthetic tasks size prompts with),
``chat_template`` (``auto``: the model folder's, ``none``, or a jinja file; what
``--apply_chat_template`` applies, through transformers' ``apply_chat_template``). ``device`` may be
given in ``--model_args`` and by lm-eval's ``--device`` at once (the model args win).

A prompt longer than ``max_length`` is cut from the left only with a warning naming the tokens
dropped (lm-eval's own models do the same); ``truncated`` counts the requests cut.

Several processes: lm-eval shards every task's documents over the model's ``rank`` and
``world_size`` and gathers the metrics through its ``all_gather`` / ``gather_object`` /
``barrier``, which this class serves with ``torch.distributed`` (a gloo group: it carries request
counts and metric lists, never tensors of the model). ``yoco eval --gpus N`` starts the processes
and the group; under ``torchrun`` (``torchrun --nproc-per-node N -m yoco_cli.lm_eval_model ...``)
the model starts the group itself and computes on ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# No hub is reachable: transformers / datasets / huggingface_hub read these when first imported
# (lm-eval imports them), so they are set before lm-eval is.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lm_eval.models  # noqa: E402,F401  (fill lm-eval's registry before adding to it)
from lm_eval import utils as lm_utils  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import model_registry, register_model  # noqa: E402

from yoco_core import generate, load_model  # noqa: E402  (importing yoco_core registers hf:, unilm:)
from yoco_core.dtypes import from_name as dtype_from_name  # noqa: E402
from yoco_core.tokenizer import BYTE_TOKENIZER_DIR, chat_template_for, render_chat  # noqa: E402

log = logging.getLogger(__name__)


def tasks_dir() -> Path | None:
    """The project's ``tasks/`` folder: ``$YOCO_TASKS_DIR``, else beside the ``yoco_cli`` package
    (an editable install or a source checkout). None when there is none."""
    env = os.environ.get("YOCO_TASKS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent / "tasks")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _as_bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


class YOCOLM(TemplateLM):
    backend = "causal"

    def __init__(self, pretrained="yoco-tiny", device=None, dtype="auto", batch_size=1, max_length=None,
                 max_gen_toks=256, chunk_size=None, add_bos_token=None, tokenizer=None, model=None,
                 max_batch_size=None, chat_template="auto", data_parallel=None, **kwargs):
        super().__init__()
        if kwargs:
            log.warning("yoco model: ignoring unknown model args %s", sorted(kwargs))
        if model is not None:                      # an already-built CausalLM (yoco eval, tests)
            self.model = model
            self.model_name = str(pretrained)
            if tokenizer is not None:
                from yoco_core.tokenizer import check_vocab, load_tokenizer

                self.model.tokenizer = load_tokenizer(tokenizer)
                check_vocab(self.model.tokenizer, self.model.config.vocab_size, self.model_name)
        else:
            dev = str(device or "auto")
            if dev == "auto" or (dev.startswith("cuda") and not torch.cuda.is_available()):
                if dev.startswith("cuda"):   # lm-eval's CLI defaults to cuda
                    log.warning("yoco model: CUDA is not available; running on cpu")
                dev = "cuda" if torch.cuda.is_available() else "cpu"
            if dev == "cuda":                # under torchrun: cuda:LOCAL_RANK, a GPU each
                from yoco_core.parallel.data import device_for, world

                dev = device_for(dev, world())
            self.model = load_model(str(pretrained), device=dev, dtype=dtype_from_name(dtype, dev),
                                    tokenizer=tokenizer)
            self.model_name = str(pretrained)
        self.model.eval()
        self.tok = self.model.tokenizer
        self._device = self.model.device
        bs = str(batch_size).split(":")[0]
        self.batch_size = 1 if bs in ("auto", "None", "") else max(1, int(bs))
        self._max_length = int(max_length) if max_length else int(self.model.config.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.chunk_size = int(chunk_size) if chunk_size else None
        self.add_bos_token = None if add_bos_token in (None, "", "None") else _as_bool(add_bos_token)
        self.synthetic_tokenizer = tokenizer
        self._template, self.template_name = chat_template_for(self.tok, chat_template or "auto")
        self.truncated = 0
        # (rank, ranks, group) of the documents' sharding: yoco eval --tp gives its data-parallel
        # layout (one rank per tensor-parallel group); else the process group's, or none
        self._rank, self._world_size, self._group = data_parallel or (*_distributed(), None)

    # -- several processes (lm-eval shards the documents by rank) -----------------------------------
    def all_gather(self, tensor):
        """Every rank's ``tensor`` (a request count), concatenated in rank order."""
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        flat = tensor.detach().reshape(-1).cpu()
        parts = [torch.empty_like(flat) for _ in range(self._world_size)]
        dist.all_gather(parts, flat, group=self._group)
        return torch.cat(parts).to(tensor.device)

    def gather_object(self, obj, dst=0):
        """Every rank's ``obj`` in rank order on ``dst``, None elsewhere."""
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        box = [None] * self._world_size if self._rank == dst else None
        g = self._group                # dst is a rank of the group: gather_object takes a global one
        dist.gather_object(obj, box, dst=dst if g is None else dist.get_global_rank(g, dst), group=g)
        return box

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """``--model_args`` and lm-eval's own settings (``--device``, ``--batch_size``): one value
        per name, the model args winning (lm-eval's base class passes both: a TypeError)."""
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # -- what lm-eval asks about ----------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer and template, for lm-eval's request cache (no path separators)."""
        where = getattr(self.tok, "path", None)
        name = f"{self.tok.name}-{where}" if where is not None else self.tok.name
        return f"{name}-{self.template_name}".replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template ``--apply_chat_template`` applies: the model arg's (``chat_template=``),
        or the value lm-eval passes when it is a spec (``auto``, ``none``, a jinja file)."""
        if chat_template is False or chat_template is None:
            return None
        if isinstance(chat_template, str):
            return chat_template_for(self.tok, chat_template)[0]
        return self._template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's chat history as text, by transformers' ``apply_chat_template``; the template
        writes its own BOS, so ``tok_encode`` adds none in front of a text that starts with it."""
        if self._template is None:
            raise ValueError(f"{self.model_name} has no chat template: pass chat_template=PATH in --model_args "
                             "(a jinja file), or leave --apply_chat_template out")
        return render_chat(self.tok, chat_history, self._template, add_generation_prompt=add_generation_prompt,
                           continue_final_message=not add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """``string``'s ids; by default with the special tokens the model's tokenizer adds (its BOS),
        none when ``string`` already starts with the BOS text (a chat template wrote it)."""
        if add_special_tokens is None:
            bos_text = getattr(self.tok, "bos_token", "")
            add_special_tokens = not (bos_text and string.startswith(bos_text))
        if not add_special_tokens or self.add_bos_token is False:
            return self.tok.encode(string)
        if self.add_bos_token and not getattr(self.tok, "adds_bos", False):
            return self.tok.encode(string, add_bos=True)
        return self.tok.encode(string, add_special_tokens=True)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(tokens)

    def _cut(self, ids: list[int], limit: int, what: str) -> list[int]:
        """``ids`` cut from the left to ``limit`` tokens, with a warning (never silently)."""
        if len(ids) <= limit:
            return ids
        self.truncated += 1
        log.warning("yoco model: a %s request of %d tokens exceeds max_length %d; its first %d tokens are "
                    "dropped (%d requests cut so far)", what, len(ids), self.max_length, len(ids) - limit,
                    self.truncated)
        return ids[-limit:]

    # -- scoring --------------------------------------------------------------------------------
    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True,
               desc: str = "loglikelihood") -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), greedy?) for token pairs, batched by length."""
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError("empty continuation")
            if len(cont) > self.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
            whole = self._cut(list(ctx) + list(cont), self.max_length + 1, desc)
            rows.append((i, whole[:-1], len(cont)))
        rows.sort(key=lambda r: -len(r[1]))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        pad = self.tok.pad_id if self.tok.pad_id < self.model.config.vocab_size else 0
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc=desc, disable=disable_tqdm)
        for s in range(0, len(rows), self.batch_size):
            batch = rows[s: s + self.batch_size]
            width = max(1, len(batch[0][1]))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            for b, (_, inp, _) in enumerate(batch):
                ids[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            logp = F.log_softmax(self.model(ids.to(self.device)).float(), dim=-1)
            for b, (i, inp, n) in enumerate(batch):
                whole = (list(pairs[i][0]) + list(pairs[i][1]))[-(self.max_length + 1):]
                target = torch.tensor(whole[-n:], device=logp.device)
                lp = logp[b, len(inp) - n: len(inp)]
                total = float(lp.gather(-1, target[:, None]).sum())
                greedy = bool((lp.argmax(-1) == target).all())
                out[i] = (total, greedy)
            bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        res = self._score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        for (key, _, _), r in zip(requests, res):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, req in enumerate(requests):
            (text,) = req.args[:1]
            tokens = self.tok_encode(text, add_special_tokens=False)
            for w in lm_utils.get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id,
                                                        max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(w))
                owner.append(n)
        scores = self._score(windows, disable_tqdm, desc="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owner, scores):
            totals[n] += lp
        for req, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), t)
        return totals

    # -- generation -----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        groups: dict[tuple, list[tuple[int, list[int], list[str], int]]] = {}
        warned = False
        for i, req in enumerate(requests):
            context, kw = req.args[0], dict(req.args[1] or {})
            until = kw.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            if (kw.get("do_sample") or float(kw.get("temperature", 0) or 0) > 0) and not warned:
                log.warning("yoco model: sampling was asked for; decoding greedily")
                warned = True
            ids = self.tok_encode(context) if context else [self.prefix_token_id]
            ids = self._cut(ids, max(1, self.max_length - max_new), "generate_until")
            groups.setdefault((len(ids), tuple(until), max_new), []).append((i, ids, until, max_new))
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for (_, until, max_new), items in groups.items():
            for s in range(0, len(items), self.batch_size):
                chunk = items[s: s + self.batch_size]
                ids = torch.tensor([c[1] for c in chunk], dtype=torch.long, device=self.device)
                gen = generate(self.model, ids, max_new, chunk_size=self.chunk_size, stop_strings=until)
                for (i, _, _, _), text in zip(chunk, gen.texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]


if "yoco" not in model_registry:
    register_model("yoco")(YOCOLM)


def _distributed() -> tuple[int, int]:
    """(rank, world size): the process group's when one is up (``yoco eval --gpus N`` starts it),
    else torchrun's environment, for which a gloo group is started here; (0, 1) for one process."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        from yoco_core.parallel.data import TIMEOUT, world

        w = world()
        if not w.parallel:
            return 0, 1
        dist.init_process_group("gloo", rank=w.rank, world_size=w.size, timeout=TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def synthetic_tokenizer_for(model_name: str) -> str:
    """The local HF tokenizer directory lm-eval's synthetic tasks should size prompts with: the
    model's folder (``hf:`` / ``unilm:`` prefix stripped) when it holds a ``tokenizer.json`` (an HF
    folder, a saved converted checkpoint), else the byte tokenizer's."""
    name = str(model_name)
    for pre in ("hf:", "unilm:"):
        if name.startswith(pre):
            name = name[len(pre):]
            break
    folder = Path(name).expanduser()
    return str(folder) if (folder / "tokenizer.json").is_file() else str(BYTE_TOKENIZER_DIR)


def cli(argv: list[str] | None = None) -> None:
    """lm-eval's own command line with the ``yoco`` model registered and the project's tasks and
    local byte tokenizer added (``--include_path``, ``--metadata tokenizer=``) unless given."""
    import json

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("run", "ls", "validate", "-h", "--help") and len(args) > 1:
        args.insert(0, "run")
    if args and args[0] == "run":
        folder = tasks_dir()
        if folder is not None and "--include_path" not in args:
            args += ["--include_path", str(folder)]
        if "--metadata" not in args:
            given = {"pretrained": "yoco-tiny"}
            if "--model_args" in args and args.index("--model_args") + 1 < len(args):
                for part in args[args.index("--model_args") + 1].split(","):
                    key, _, value = part.partition("=")
                    given[key.strip()] = value.strip()
            source = given.get("tokenizer") or given["pretrained"]
            args += ["--metadata", json.dumps({"tokenizer": synthetic_tokenizer_for(source)})]
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval"] + args
    cli_evaluate()


if __name__ == "__main__":
    cli()
