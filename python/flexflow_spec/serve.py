"""The serving API: LLM, GenerationConfig, GenerationResult (FlexFlow Serve names)."""
from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtime
from ._lib import check, ffi, lib
from .errors import FlexFlowSpecError, InvalidArgumentError, StateError
from .resolve import resolve_model


class DataType(enum.IntEnum):
    DT_FLOAT = 0
    DT_HALF = 1
    DT_BFLOAT16 = 2


@dataclass
class GenerationConfig:
    """Decoding settings. topk=0 (or 1 with do_sample=False) means no top-k filter."""
    do_sample: bool = False
    temperature: float = 0.9
    topp: float = 0.8
    topk: int = 1
    seed: int | None = None

    def validate(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise InvalidArgumentError(f"do_sample must be True or False, got {self.do_sample!r}")
        if self.do_sample:
            if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
                raise InvalidArgumentError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
            if not (isinstance(self.topp, (int, float)) and 0 < self.topp <= 1):
                raise InvalidArgumentError(f"topp must be in (0, 1], got {self.topp!r}")
            if not (isinstance(self.topk, int) and self.topk >= 0):
                raise InvalidArgumentError(f"topk must be an integer >= 0, got {self.topk!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**64):
            raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")


@dataclass
class SpeculationConfig:
    """Token tree shape. widths[d-1] = nodes the SSMs keep at depth d (the last repeats).
    The default is SpecInfer's: depth 8, one branch at depths 1-2, three from depth 3, at most
    64 tree tokens per request. SpeculationConfig.chain(depth) speculates a single sequence
    (the original's --expansion-degree -1)."""
    max_depth: int = 8
    widths: tuple = (1, 1, 3)
    max_tree_tokens: int = 64
    # How sampled requests are verified: "mss" (SpecInfer's multi-step speculative sampling,
    # exact). "argmax_match" accepts a draft only when it is the LLM's most likely token: it
    # is biased on purpose, for tests that must be able to catch a wrong verifier.
    verifier: str = "mss"
    # Per request, draft (accepted + 1) levels after a rejection and twice as many after a
    # fully accepted round, up to max_depth; False: always max_depth.
    adaptive_depth: bool = True

    @classmethod
    def chain(cls, depth: int = 8, **kw) -> SpeculationConfig:
        return cls(max_depth=depth, widths=(1,), max_tree_tokens=max(depth, 1), **kw)

    def validate(self) -> None:
        if not (isinstance(self.max_depth, int) and 1 <= self.max_depth <= 64):
            raise InvalidArgumentError(f"max_depth must be in [1, 64], got {self.max_depth!r}")
        w = tuple(self.widths)
        if not (1 <= len(w) <= 16 and all(isinstance(x, int) and 1 <= x <= 16 for x in w)):
            raise InvalidArgumentError(f"widths must be 1 to 16 integers in [1, 16], got {self.widths!r}")
        if not (isinstance(self.max_tree_tokens, int) and 1 <= self.max_tree_tokens <= 64):
            raise InvalidArgumentError(f"max_tree_tokens must be in [1, 64], got {self.max_tree_tokens!r}")
        if self.verifier not in ("mss", "argmax_match"):
            raise InvalidArgumentError(f"verifier must be 'mss' or 'argmax_match', got {self.verifier!r}")


@dataclass
class GenerationResult:
    guid: int
    input_text: str | None
    output_text: str
    input_tokens: list[int]
    output_tokens: list[int]
    finish_reason: str = "length"      # "eos" or "length"
    llm_decoding_steps: int = 0
    accepted_tokens: list[int] = field(default_factory=list)  # tokens emitted per LLM step
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    logits: Any = None                 # numpy [len(output_tokens), vocab] when asked for


_FINISH = {1: "eos", 2: "length"}


def _load_tokenizer(path: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists() or \
                (path / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a checkpoint without a usable tokenizer can still run token ids
        import warnings
        warnings.warn(f"flexflow_spec: no tokenizer loaded for {path}: {e}", stacklevel=3)
    return None


class LLM:
    """A causal LM served by flexflow_spec.

    model_name: a local HF checkpoint directory, a .gguf file, or a HF id found in the local
    Hugging Face cache or in cache_path.
    """

    def __init__(self, model_name: str, data_type: DataType = DataType.DT_HALF, cache_path: str = "",
                 refresh_cache: bool = False, output_file: str = ""):
        try:
            data_type = DataType(data_type)
        except ValueError:
            raise InvalidArgumentError(f"data_type must be a DataType, got {data_type!r}") from None
        self.model_name = model_name
        self.data_type = data_type
        self.output_file = output_file
        self.path = resolve_model(model_name, cache_path)
        handle = ffi.new("ffs_model_t *")
        check(lib.ffs_model_load(str(self.path).encode(), int(data_type), handle))
        self._handle = ffi.gc(handle[0], lib.ffs_model_free)
        info = ffi.new("ffs_model_info_t *")
        check(lib.ffs_model_info(self._handle, info))
        self.vocab_size = info.vocab_size
        self.num_layers = info.num_layers
        self.architecture = ffi.string(info.architecture).decode()
        self.eos_token_ids = [info.eos_ids[i] for i in range(info.num_eos_ids)]
        self.bos_token_id = info.bos_token_id
        self._tokenizer = None
        self._tokenizer_loaded = False
        self._ff_tokenizer = None
        self._ff_tokenizer_loaded = False
        self._tok_lock = threading.Lock()
        self.generation_config: GenerationConfig | None = None
        self.max_seq_length = 0
        self.ssms: list = []

    @property
    def tokenizer(self):
        with self._tok_lock:
            if not self._tokenizer_loaded:
                self._tokenizer = _load_tokenizer(self.path)
                self._tokenizer_loaded = True
        return self._tokenizer

    def compile(self, generation_config: GenerationConfig | None = None, max_requests_per_batch: int = 1,
                max_seq_length: int = 256, max_tokens_per_batch: int = 64, ssms: Sequence = (),
                speculation: SpeculationConfig | None = None):
        """Place the weights and the KV cache in Legion regions and start serving.

        With ssms (compiled SSM objects sharing this model's vocabulary) the LLM runs
        speculative inference with token tree verification; speculation sets the tree shape.
        """
        ssms = list(ssms)
        for s in ssms:
            if not isinstance(s, LLM):
                raise InvalidArgumentError(f"ssms must be compiled ff.SSM objects, got {type(s).__name__}")
            if s.generation_config is None:
                raise StateError(f"SSM {s.model_name}: call ssm.compile() before llm.compile(ssms=...)")
        spec = speculation or SpeculationConfig()
        spec.validate()
        for name, val in (("max_requests_per_batch", max_requests_per_batch), ("max_seq_length", max_seq_length),
                          ("max_tokens_per_batch", max_tokens_per_batch)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise InvalidArgumentError(f"{name} must be an integer, got {val!r}")
        gc = generation_config or GenerationConfig()
        gc.validate()
        runtime.ensure_started()
        params = ffi.new("ffs_compile_params_t *", {
            "max_requests_per_batch": max_requests_per_batch, "max_seq_length": max_seq_length,
            "max_tokens_per_batch": max_tokens_per_batch})
        if ssms:
            tree = ffi.new("ffs_tree_params_t *")
            tree.max_depth = spec.max_depth
            tree.num_widths = len(spec.widths)
            for i, w in enumerate(spec.widths):
                tree.widths[i] = w
            tree.max_tree_tokens = spec.max_tree_tokens
            tree.verifier = 0 if spec.verifier == "mss" else 1
            tree.adaptive_depth = int(bool(spec.adaptive_depth))
            handles = ffi.new("ffs_model_t[]", [s._handle for s in ssms])
            check(lib.ffs_model_compile_speculative(self._handle, params, handles, len(ssms), tree))
        else:
            check(lib.ffs_model_compile(self._handle, params))
        self.ssms = ssms
        self.speculation = spec if ssms else None
        self.generation_config = gc
        self.max_seq_length = max_seq_length

    def stats(self) -> dict:
        """Step timing since compile: steps, and milliseconds spent computing inside the step
        tasks (compute_ms), per step from its launch to its result (wall_ms; with the pipelined
        driver, from the later of its launch and the previous step's end to its end), and in the
        driver between steps. Legion's overhead is 1 - compute_ms / wall_ms."""
        st = ffi.new("ffs_model_stats_t *")
        check(lib.ffs_model_stats(self._handle, st))
        return {"steps": st.steps, "compute_ms": st.compute_us / 1e3, "wall_ms": st.wall_us / 1e3,
                "driver_ms": st.driver_us / 1e3}

    # ---- generation -----------------------------------------------------------------------

    @property
    def ff_tokenizer(self):
        """Our C++ tokenizer (ff.Tokenizer) for this checkpoint, or None when it has none we
        read; text is encoded and decoded with it, exactly as the binaries do."""
        with self._tok_lock:
            if not self._ff_tokenizer_loaded:
                from .tokenizer import Tokenizer
                try:
                    self._ff_tokenizer = Tokenizer(self.path)
                except FlexFlowSpecError:
                    self._ff_tokenizer = None  # e.g. WordPiece: Hugging Face's tokenizer is used
                self._ff_tokenizer_loaded = True
        return self._ff_tokenizer

    def _encode_text(self, text: str, add_special_tokens: bool) -> list[int]:
        ours = self.ff_tokenizer
        if ours is not None:
            return ours.encode(text, add_special_tokens=add_special_tokens)
        tok = self.tokenizer
        if tok is None:
            raise InvalidArgumentError(f"{self.model_name} has no tokenizer: pass token ids instead of text")
        return list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _encode(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self._encode_text(prompt, True)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            tok = self.tokenizer  # chat templates are Jinja: rendered by transformers
            if tok is None or not getattr(tok, "chat_template", None):
                raise InvalidArgumentError(f"{self.model_name} has no chat template for chat messages")
            text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            return text, self._encode_text(text, False)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return None, list(prompt)
        raise InvalidArgumentError("a prompt is a string, a list of token ids or a list of chat messages; "
                                   f"got {type(prompt).__name__}")

    def _decode(self, tokens: list[int]) -> str:
        ours = self.ff_tokenizer
        if ours is not None:
            return ours.decode(tokens, skip_special_tokens=True)
        tok = self.tokenizer
        return tok.decode(tokens, skip_special_tokens=True) if tok is not None else ""

    def generate(self, prompts, max_length: int = -1, max_new_tokens: int = -1,
                 generation_config: GenerationConfig | None = None, return_logits: bool = False,
                 ignore_eos: bool = False):
        """Generate for one prompt (returns a GenerationResult) or a list (returns a list).

        A prompt is a string (tokenized with the checkpoint's tokenizer, BOS as it adds it),
        a list of token ids (used exactly as given), or chat messages. generation_config is one
        GenerationConfig for all prompts or a list with one per prompt. ignore_eos=True runs
        every request to its length limit (benchmarks); return_logits=True keeps the logits
        behind each generated token in result.logits.

        A request that fails does not stop the others: once every request is collected, the
        first failure is raised, and its ``results`` attribute holds each prompt's
        GenerationResult (None where that request failed).
        """
        if self.generation_config is None:
            raise StateError(f"{self.model_name}: call compile() before generate()")
        single = isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and (
                (len(prompts) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts)) or
                (len(prompts) > 0 and all(isinstance(m, dict) for m in prompts))))
        batch = [prompts] if single else list(prompts)
        for name, val in (("max_length", max_length), ("max_new_tokens", max_new_tokens)):
            if isinstance(val, bool) or not isinstance(val, int) or val < -1:
                raise InvalidArgumentError(f"{name} must be an integer >= 0 (or -1 for no limit), got {val!r}")
        if isinstance(generation_config, (list, tuple)):
            if len(generation_config) != len(batch):
                raise InvalidArgumentError(f"generation_config: got {len(generation_config)} configs for "
                                           f"{len(batch)} prompts (give one, or one per prompt)")
            configs = list(generation_config)
        else:
            configs = [generation_config or self.generation_config] * len(batch)
        for gc in configs:
            if not isinstance(gc, GenerationConfig):
                raise InvalidArgumentError(f"generation_config must be a GenerationConfig, got {type(gc).__name__}")
            gc.validate()
        if return_logits and self.ssms:
            raise InvalidArgumentError("return_logits is only available without speculation (ssms)")
        encoded = [self._encode(p) for p in batch]
        guids = self._submit_many([ids for _, ids in encoded], configs, max_length, max_new_tokens, return_logits,
                                  ignore_eos)
        results, error = [], None
        for g, (text, ids) in zip(guids, encoded):
            try:
                results.append(self._collect(g, text, ids, return_logits))
            except FlexFlowSpecError as e:  # this request failed: still collect (and free) the others
                error = error or e
                results.append(None)
        if error is not None:
            error.results = results
            try:
                raise error
            finally:
                # Otherwise this frame -> error -> its traceback -> this frame is a cycle
                # that keeps the model (self) alive until the garbage collector runs.
                error = None
        self._write_output_file(results)
        return results[0] if single else results

    def _submit_many(self, prompts: list[list[int]], configs: list[GenerationConfig], max_length: int,
                     max_new_tokens: int, return_logits: bool, ignore_eos: bool) -> list[int]:
        """All prompts are validated, then queued together (one step can take them all)."""
        n = len(prompts)
        params = ffi.new("ffs_request_params_t[]", max(n, 1))
        for p, gc in zip(params, configs):
            p.max_new_tokens = max_new_tokens
            p.max_length = max_length
            p.do_sample = int(gc.do_sample)
            p.temperature = float(gc.temperature)
            p.topp = float(gc.topp)
            p.topk = int(gc.topk) if gc.do_sample else 0
            p.has_seed = int(gc.seed is not None)
            p.seed = int(gc.seed or 0)
            p.return_logits = int(return_logits)
            p.num_eos_ids = 0 if ignore_eos else -1
        arrays = [ffi.new("int32_t[]", ids) for ids in prompts]
        tokens = ffi.new("int32_t *[]", arrays)
        lens = ffi.new("int32_t[]", [len(ids) for ids in prompts])
        guids = ffi.new("uint64_t[]", max(n, 1))
        check(lib.ffs_request_submit_many(self._handle, n, tokens, lens, params, guids))
        return list(guids[0:n])

    def _collect(self, guid: int, text, ids, return_logits: bool) -> GenerationResult:
        res = ffi.new("ffs_request_result_t *")
        try:
            check(lib.ffs_request_wait(self._handle, guid, -1, res))
        except FlexFlowSpecError:
            if res.finish_reason == 3:  # failed, but finished: forget it
                lib.ffs_request_release(self._handle, guid)
            raise
        n = res.num_output_tokens
        buf = ffi.new("int32_t[]", max(n, 1))
        check(lib.ffs_request_get_tokens(self._handle, guid, buf, n))
        out = list(buf[0:n])
        logits = None
        if return_logits:
            import numpy as np
            logits = np.empty((n, res.vocab_size), dtype=np.float32)
            check(lib.ffs_request_get_logits(self._handle, guid, ffi.cast("float *", ffi.from_buffer(logits)),
                                             logits.size))
        steps = res.llm_decoding_steps
        acc = ffi.new("int32_t[]", max(steps, 1))
        check(lib.ffs_request_get_accepted(self._handle, guid, acc, steps))
        accepted = list(acc[0:steps])
        check(lib.ffs_request_release(self._handle, guid))
        return GenerationResult(
            guid=guid, input_text=text, output_text=self._decode(out), input_tokens=list(ids),
            output_tokens=out, finish_reason=_FINISH.get(res.finish_reason, "length"),
            llm_decoding_steps=steps, accepted_tokens=accepted,
            latency_ms=res.latency_us / 1000.0, ttft_ms=res.ttft_us / 1000.0, logits=logits)

    def _write_output_file(self, results: list[GenerationResult]) -> None:
        if not self.output_file:
            return
        with open(self.output_file, "a", encoding="utf-8") as f:
            for r in results:
                f.write(f"[Profile] guid({r.guid}) llm_decoding_steps({r.llm_decoding_steps}) "
                        f"latency({r.latency_ms * 1000:.0f}) ttft({r.ttft_ms * 1000:.0f})\n")
                f.write("token IDs: " + ", ".join(map(str, r.input_tokens + r.output_tokens)) + "\n")
                f.write((r.input_text or "") + r.output_text + "\n")


class SSM(LLM):
    """A small speculative model: compile it, then pass it to llm.compile(ssms=[...])."""
