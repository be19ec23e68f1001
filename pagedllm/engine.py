"""LLMEngine: add_request / abort_request / step(), synchronous and single-threaded.

One step is: schedule -> run the model -> process outputs (append tokens, detokenize, check stops,
retire finished requests). With async scheduling (CUDA's default) a step launches the model and
then processes the PREVIOUS step's outputs while the GPU computes (docs/engine.md). The engine
loop (engine_loop.py) wraps it in a thread for servers.

A request asking for n > 1 completions (`SamplingParams.n`) runs as n sequences, each an engine
request of its own (the scheduler and the KV cache see n requests); they share the caller's
request id, and deltas and outputs carry each sequence's `index`.

Structured outputs (`SamplingParams.structured_outputs`): the grammar is compiled (and cached) in
add_request, or before it by the caller (EngineLoop compiles beside its thread:
grammar_compiles.py); each sequence has its own matcher, whose bitmask masks its row's logits at every
sampling step and which accepts every token appended; the sequence stops when its grammar ends.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from pagedllm.config import EngineConfig, resolve_max_model_len
from pagedllm.detokenizer import IncrementalDetokenizer
from pagedllm.errors import OverloadedError
from pagedllm.kv_cache_manager import KVCacheManager
from pagedllm.sampler import SamplingRow, sampling_rows, uses_penalties
from pagedllm.model_runner import ModelRunner
from pagedllm.models.config import ModelConfig
from pagedllm.outputs import CompletionOutput, RequestOutput, StreamDelta
from pagedllm.request import OutputState, Request, RequestStatus
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler import Scheduler, SchedulerOutput
from pagedllm import stop_checker
from pagedllm.tokenizer import Tokenizer


class LLMEngine:
    """The synchronous engine. Not thread-safe: one thread calls it (see EngineLoop)."""

    def __init__(self, config: EngineConfig, runner=None) -> None:
        """Load the model named by `config`; `runner` replaces the model runner (tests, benchmarks)."""
        config = config.resolved()
        self.config = config
        self.model_config = ModelConfig.from_dir(config.model)
        self.tokenizer = Tokenizer.from_dir(config.model)
        self.runner = runner or ModelRunner(config, self.model_config)
        num_blocks = self.runner.num_kv_blocks
        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.detokenizer = IncrementalDetokenizer(self.tokenizer)
        self.max_model_len = resolve_max_model_len(
            config, self.model_config.max_position_embeddings, num_blocks)
        self.requests: dict[str, Request] = {}      # engine requests (sequences), by their id
        self._groups: dict[str, _Group] = {}        # callers' requests, by the caller's id
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        on_cuda = str(getattr(self.runner, "device", "cpu")).startswith("cuda")
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else on_cuda)
        self.scheduler = Scheduler(self.kv_cache, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.async_scheduling)
        self._in_flight: _Launched | None = None  # the launched step not read back yet
        self._grammars = None  # GrammarCompiler, made for the first constrained request
        self._grammars_lock = threading.Lock()
        self._host_rows = False  # a request's sampling needs its last token on the host
        if on_cuda:
            # NOTE: what start-up made (torch modules, the tokenizer's tables, ...) lives as long
            # as the engine. Frozen, Python's full collections no longer walk it: the first of them
            # under traffic stopped the loop for a long pause (docs/engine.md; bench/peer.py counts
            # them). vLLM freezes after start-up too. The engine's objects hold no reference
            # cycles, so a dropped engine is still freed.
            gc.collect()
            gc.freeze()

    # ---- requests in and out -------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | Sequence[int],
                    params: SamplingParams | None = None, grammar=None) -> None:
        """Queue a request (its `params.n` sequences).

        `grammar`: its structured_outputs already compiled (compile_grammar), else it compiles here.

        Raises:
            ValueError: naming the problem (nothing is queued then); OverloadedError, a
                ValueError, when `max_queue_len` requests already wait.
        """
        params = params or SamplingParams()
        if request_id in self._groups:
            raise ValueError(f"request_id {request_id!r} is already in use")
        limit = self.config.max_queue_len
        if limit is not None and len(self.scheduler.waiting) + params.n > limit:
            raise OverloadedError(f"overloaded: {len(self.scheduler.waiting)} sequences are "
                                  f"waiting (max_queue_len {limit}); retry later")
        if isinstance(prompt, str):
            text: str | None = prompt
            prompt_ids = self.tokenizer.encode(prompt)
        else:
            text = None
            prompt_ids = list(prompt)
        self._check_prompt(prompt_ids)
        self._check_token_ids(params)
        room = self.max_model_len - len(prompt_ids)
        if self.config.strict_max_tokens and params.max_tokens is not None \
                and params.max_tokens > room:
            raise ValueError(f"max_tokens is {params.max_tokens}, but the prompt has "
                             f"{len(prompt_ids)} tokens and max_model_len is {self.max_model_len}: "
                             f"at most {room} tokens can follow it")
        max_tokens = room if params.max_tokens is None else min(room, params.max_tokens)
        if params.structured_outputs is not None and grammar is None:
            grammar = self.compile_grammar(params)
        bad_words = self._bad_words_ids(params.bad_words) if params.bad_words else ()
        ids = [request_id] if params.n == 1 else [f"{request_id}{_SEP}{i}" for i in range(params.n)]
        self._groups[request_id] = _Group(ids, params.n, text)
        for index, child_id in enumerate(ids):
            self._add_sequence(request_id, index, child_id, prompt_ids, params, max_tokens,
                               grammar, bad_words)
        self.num_prompt_tokens_total += len(prompt_ids)

    def _add_sequence(self, group_id: str, index: int, request_id: str, prompt_ids: list[int],
                      params: SamplingParams, max_tokens: int, grammar=None,
                      bad_words: tuple[tuple[int, ...], ...] = ()) -> None:
        eos = self.model_config.eos_token_ids
        generator = None
        if params.seed is not None:  # sequence i of a seeded request draws with seed + i
            generator = torch.Generator(device=self.runner.device).manual_seed(params.seed + index)
        state = OutputState(
            group_id=group_id,
            index=index,
            sampling_row=SamplingRow(params=params, prompt_token_ids=prompt_ids,
                                     output_token_ids=(), generator=generator),
            row_varies=(uses_penalties(params) or params.min_tokens > 0 or grammar is not None
                        or bool(bad_words)),
            detok=self.detokenizer.new_state(prompt_ids, params.skip_special_tokens),
            stop_ids=stop_checker.stopping_ids(params, eos),
            stop_holdback=stop_checker.holdback(params),
            generator=generator,
            logprobs=[] if params.logprobs is not None else None,
            matcher=self._new_matcher(grammar) if grammar is not None else None,
            bad_words_ids=bad_words)
        self._host_rows = self._host_rows or grammar is not None or bool(bad_words)
        request = Request(request_id=request_id, prompt_token_ids=prompt_ids, sampling_params=params,
                          max_tokens=max_tokens, eos_token_ids=eos, state=state)
        self.requests[request_id] = request
        self.scheduler.add_request(request)

    def compile_grammar(self, params: SamplingParams):
        """The request's compiled grammar (ValueError naming the field when it has none).

        Thread-safe, unlike the rest of the engine: EngineLoop calls it from worker threads.
        """
        with self._grammars_lock:
            if self._grammars is None:
                from pagedllm.structured_outputs import GrammarCompiler  # xgrammar: ~2 s to import
                self._grammars = GrammarCompiler(self.config.model, self.model_config.vocab_size,
                                                 self.model_config.eos_token_ids)
        return self._grammars.compile(params.structured_outputs)

    def cached_grammar(self, params: SamplingParams):
        """The request's grammar if it was compiled before, else None (never compiles)."""
        return None if self._grammars is None else self._grammars.cached(params.structured_outputs)

    def _bad_words_ids(self, words: list[str]) -> tuple[tuple[int, ...], ...]:
        """Each bad word's tokens, alone and after a space (vLLM's rule)."""
        out = set()
        for word in words:
            for text in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode_plain(text)
                if ids:
                    out.add(tuple(ids))
        return tuple(sorted(out))

    def _new_matcher(self, grammar):
        from pagedllm.structured_outputs import Matcher
        return Matcher(grammar, self._grammars.vocab_size)

    def abort_request(self, request_id: str) -> list[StreamDelta]:
        """Abort a request in any state: the final delta of each of its unfinished sequences (the
        last one `finished`), or [] if the request is not live."""
        group = self._groups.get(request_id)
        if group is None:
            return []
        deltas = []
        for child_id in group.children:
            request = self.requests[child_id]
            if not request.is_finished:
                self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)
                deltas.append(self._final_delta(request, []))
        return deltas

    def has_unfinished_requests(self) -> bool:
        # NOTE: a request whose last token is still in flight (async scheduling) is still running;
        # a step left in flight after everything finished holds only tokens to drop.
        return self.scheduler.num_unfinished > 0

    def get_output(self, request_id: str) -> RequestOutput:
        """The vLLM-shaped output of a request, one CompletionOutput per sequence (final once it
        finished)."""
        group = self._groups[request_id]
        sequences = [self.requests[child_id] for child_id in group.children]
        completions = [CompletionOutput(
            index=r.state.index, text=r.state.text, token_ids=r.output_token_ids,
            cumulative_logprob=r.state.cumulative_logprob if r.state.logprobs is not None else None,
            logprobs=r.state.logprobs, finish_reason=r.finish_reason, stop_reason=r.stop_reason)
            for r in sequences]
        first = sequences[0]
        return RequestOutput(request_id=request_id, prompt=group.prompt,
                             prompt_token_ids=list(first.prompt_token_ids), outputs=completions,
                             finished=group.unfinished == 0,
                             num_cached_tokens=first.num_cached_tokens)

    def release(self, request_id: str) -> None:
        """Forget a finished request (its blocks are already free)."""
        group = self._groups.get(request_id)
        if group is not None and group.unfinished == 0:
            for child_id in group.children:
                del self.requests[child_id]
            del self._groups[request_id]

    # ---- the step ------------------------------------------------------------------------------

    def step(self) -> list[StreamDelta]:
        """Run one scheduling step; return a delta for every request that progressed or finished.

        schedule -> launch on the runner -> process the sampled tokens. With async scheduling
        the step launched here is not waited for: the deltas returned are those of the step
        launched by the previous call, read back while this one runs.
        """
        deltas = []
        if self._in_flight is not None and self._in_flight.constrained:
            # NOTE: a constrained row's bitmask needs its matcher to have accepted the row's last
            # token, so the step after one with a constrained row does not overlap: it reads that
            # step's tokens back first, then schedules (as a synchronous step does).
            deltas, self._in_flight = self._process(self._in_flight), None
        step = self.scheduler.schedule()
        launched = self._launch(step) if not step.is_empty else None
        if self.async_scheduling:
            launched, self._in_flight = self._in_flight, launched
        return deltas + self._process(launched) if launched is not None else deltas

    def _launch(self, step: SchedulerOutput) -> _Launched:
        """Start the step on the runner, then record it in the scheduler (the sampling rows come
        first: they read the requests as they stood before the step)."""
        step.rows = sampling_rows(step.sampling)
        handle = self.runner.launch(step)
        self.scheduler.update_after_step(step)
        constrained = self._host_rows and any(
            r.state.matcher is not None or r.state.bad_words_ids for r in step.sampling)
        return _Launched(step.sampling, handle, constrained)

    def _process(self, launched: _Launched) -> list[StreamDelta]:
        """Append the sampled tokens, advance the text, retire finished requests; one delta each.

        NOTE: runs once per running request per step: the engine's hot loop on CPU. Keep it flat.
        """
        result = launched.handle.result()
        requests, tokens, logprobs = self.scheduler.update_from_output(
            launched.requests, result.token_ids, result.logprobs)
        self.num_generation_tokens_total += len(requests)
        texts = self.detokenizer.step([r.state.detok for r in requests],
                                      [r.all_token_ids for r in requests])
        deltas = []
        for r, token, lp, new in zip(requests, tokens, logprobs, texts):
            st = r.state
            if lp is not None:
                st.logprobs.append(lp)
                st.cumulative_logprob += lp[token]
            status = None
            if st.matcher is not None and st.matcher.advance(token):
                # the grammar is complete (it ends by accepting EOS, which the output leaves out)
                status = RequestStatus.FINISHED_STOPPED
            elif token in st.stop_ids or len(r.all_token_ids) - r.num_prompt_tokens >= r.max_tokens:
                status = stop_checker.check_token(r, token)
            # (stop_holdback is 0 for one-character stop strings: test the strings themselves.)
            if status is not None or r.sampling_params.stop:
                deltas.append(self._finish_or_hold(r, new, status))
                continue
            # Common case: no stop strings, not finishing: the delta is the new text.
            if new:
                st.text += new
                st.num_text_sent += len(new)
            # Positional, in WIRE_FIELDS order (see StreamDelta: keywords cost more per step):
            # request_id, index, token_ids, text, finished, finish_reason, logprobs,
            # num_prompt_tokens, num_output_tokens.
            deltas.append(StreamDelta(
                st.group_id, st.index, [token], new, False, None,
                st.logprobs[-1:] if st.logprobs is not None else None,
                r.num_prompt_tokens, len(r.all_token_ids) - r.num_prompt_tokens))
        return deltas

    def _finish_or_hold(self, r: Request, new: str, status: RequestStatus | None) -> StreamDelta:
        """The delta of a request that finishes this step or has stop strings to watch for."""
        st = r.state
        if status is not None:
            new += self.detokenizer.flush(st.detok, r.all_token_ids)
        if new:
            st.text += new
            if r.sampling_params.stop and stop_checker.find_stop_string(r, len(new)):
                status = RequestStatus.FINISHED_STOPPED
        if status is not None:
            self.scheduler.finish(r, status)
            return self._final_delta(r, [r.all_token_ids[-1]])
        text = ""
        sendable = len(st.text) - st.stop_holdback
        if sendable > st.num_text_sent:
            text = st.text[st.num_text_sent:sendable]
            st.num_text_sent = sendable
        return StreamDelta(request_id=st.group_id, index=st.index, token_ids=[r.all_token_ids[-1]],
                           text=text, logprobs=st.logprobs[-1:] if st.logprobs is not None else None,
                           num_prompt_tokens=r.num_prompt_tokens,
                           num_output_tokens=r.num_output_tokens)

    def _final_delta(self, r: Request, token_ids: list[int]) -> StreamDelta:
        """The last delta of a sequence that just finished; `finished` when it was the request's
        last unfinished sequence."""
        st = r.state
        text = st.text[st.num_text_sent:]
        st.num_text_sent = len(st.text)
        group = self._groups[st.group_id]
        group.unfinished -= 1
        return StreamDelta(request_id=st.group_id, index=st.index, token_ids=token_ids, text=text,
                           finished=group.unfinished == 0, finish_reason=r.finish_reason,
                           logprobs=st.logprobs[-1:] if st.logprobs and token_ids else None,
                           num_prompt_tokens=r.num_prompt_tokens,
                           num_output_tokens=r.num_output_tokens)

    # ---- checks and stats ----------------------------------------------------------------------

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab)]
        if bad:
            raise ValueError(f"prompt_token_ids must be ints in [0, {vocab}), got {bad[:5]}")
        # NOTE: max_model_len is never more than the cache holds, so this also rules out a
        # prompt that needs more KV blocks than the whole cache has.
        if len(prompt_ids) >= self.max_model_len:
            kv = self.kv_cache
            capped = (f", capped by the KV cache: {kv.num_blocks} KV blocks of {kv.block_size} tokens"
                      if self.max_model_len == kv.num_blocks * kv.block_size else "")
            raise ValueError(f"prompt has {len(prompt_ids)} tokens, but max_model_len is "
                             f"{self.max_model_len}{capped} (prompt + at least one output token "
                             f"must fit)")

    def _check_token_ids(self, p: SamplingParams) -> None:
        vocab = self.model_config.vocab_size
        for name, ids in (("allowed_token_ids", p.allowed_token_ids or ()),
                          ("logit_bias", p.logit_bias or ())):
            bad = [t for t in ids if t >= vocab]
            if bad:
                raise ValueError(f"{name} must name token ids in [0, {vocab}), got {bad[:5]}")

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix if no request holds KV blocks; returns whether it did."""
        return self.kv_cache.reset_prefix_cache()

    def kv_cache_stats(self) -> dict:
        """KV-cache occupancy and prefix-cache counters."""
        kv = self.kv_cache
        return {
            "num_total_blocks": kv.num_blocks,
            "num_free_blocks": kv.num_free_blocks,
            "num_cached_blocks": kv.pool.num_cached_blocks,
            "block_size": kv.block_size,
            "usage": kv.usage,
            "prefix_cache_queries": kv.prefix_stats.queries,
            "prefix_cache_hits": kv.prefix_stats.hits,
            "num_preemptions": self.scheduler.stats.num_preemptions,
            "num_partial_prefills": self.scheduler.stats.num_partial_prefills,
        }


_SEP = "\x1f"  # between a request's id and a sequence's index, in the ids of n > 1 sequences


@dataclass(slots=True)
class _Launched:
    """A launched step: the requests that sample in it, in row order, and its tokens' handle."""

    requests: list[Request]
    handle: object  # SampleHandle: result() -> SamplerOutput
    constrained: bool = False  # a row needs its tokens on the host (the next step reads them
    #                            back before it launches): a grammar, or bad words


@dataclass(slots=True)
class _Group:
    """A caller's request: its sequences' engine ids (index order) and how many still run."""

    children: list[str]
    unfinished: int
    prompt: str | None


