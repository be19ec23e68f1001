"""Constrained decoding with xgrammar: grammars compiled once and cached, one matcher per sequence.

    compiler = GrammarCompiler(model_dir, vocab_size, eos_token_ids)   once per engine
    grammar = compiler.compile(params.structured_outputs)              per request (cached)
    matcher = Matcher(grammar)                                         per sequence (n > 1: n)
    matcher.fill_mask() -> int32 bitmask of the tokens allowed next    before each sampling step
    matcher.advance(token) -> True once the output is complete         after each sampled token

xgrammar is imported on the first constrained request (it takes ~2 s, transformers included), so
an engine that never sees one never pays for it. Compiling runs before the request is queued (a
server's engine loop compiles on worker threads, with a deadline: grammar_compiles.py): an invalid
or unenforceable schema, regex or grammar is a ValueError naming the field then, and nothing runs. A JSON Schema compiles in about a millisecond for this repository's
default 4,096-token vocabulary (scripts/pagedllm_tools/bench/grammar_cache.py); a repeated one is a dict lookup.

The vocabulary comes from the checkpoint's tokenizer.json (xgrammar reads its decoder to tell
byte-level BPE from byte-fallback SentencePiece). Special tokens other than EOS are never allowed
in constrained output (their text would not be in the detokenized output), and ids past the
tokenizer's vocabulary up to the model's (padding rows of lm_head) are masked too.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from pagedllm.structured_outputs_params import StructuredOutputsParams

logger = logging.getLogger(__name__)

CACHE_SIZE = 1024
"""Compiled grammars kept (least recently used dropped first)."""

# JSON Schema keywords xgrammar 0.2.9 does not enforce (it would ignore them without a word).
UNSUPPORTED_KEYWORDS = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                        "dependencies", "uniqueItems", "contains", "minContains", "maxContains",
                        "propertyNames", "unevaluatedProperties", "unevaluatedItems")
# Regex features xgrammar ignores (lookaround) or cannot express (backreferences).
_UNSUPPORTED_REGEX = re.compile(r"\(\?<?[=!]|\\[1-9]")
# Subschemas: keyword -> how its value holds them.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "additionalItems")
_XGR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class GrammarCompiler:
    """Compiles StructuredOutputsParams into xgrammar grammars for one model's vocabulary.

    Thread-safe: the OpenAI-free paths (LLM, the engine loop) call it from one thread, but the
    cache has a lock so a caller may warm it from another.

    Args:
        model_dir: the checkpoint directory (its tokenizer.json).
        vocab_size: the model's vocabulary (lm_head rows; may exceed the tokenizer's).
        eos_token_ids: the ids that end the output (the grammar allows them only at its end).
    """

    def __init__(self, model_dir: str | Path, vocab_size: int,
                 eos_token_ids: tuple[int, ...]) -> None:
        import tokenizers
        import xgrammar as xgr

        self._xgr = xgr
        tok = tokenizers.Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        vocab = tok.get_vocab(with_added_tokens=True)
        size = max(vocab_size, max(vocab.values()) + 1)
        encoded = [""] * size
        for token, i in vocab.items():
            encoded[i] = token
        # NOTE: an empty string makes xgrammar treat the id as special: never allowed. EOS keeps
        # its text; it is allowed where the grammar ends (stop_token_ids).
        for i, added in tok.get_added_tokens_decoder().items():
            if added.special and i not in eos_token_ids:
                encoded[i] = ""
        meta = xgr.TokenizerInfo._detect_metadata_from_hf(tok.to_str())
        self.info = xgr.TokenizerInfo(encoded, vocab_type=meta["vocab_type"], vocab_size=size,
                                      stop_token_ids=list(eos_token_ids) or None,
                                      add_prefix_space=meta["add_prefix_space"])
        self.vocab_size = size
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, params: StructuredOutputsParams):
        """The compiled grammar of `params` (from the cache when it was compiled before).

        Raises:
            ValueError: naming the field (`structured_outputs.json`, `.regex`, `.grammar`,
                `.choice`): the schema, regex or grammar is invalid, or uses a feature this
                engine cannot enforce.
        """
        key = params.key()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compile(params)
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def cached(self, params: StructuredOutputsParams):
        """The compiled grammar of `params` if it is in the cache, else None."""
        with self._lock:
            return self._cache.get(params.key())

    def _compile(self, params: StructuredOutputsParams):
        kind = params.kind
        field = f"structured_outputs.{kind}"
        c = self._compiler
        ws = not params.disable_any_whitespace
        try:
            if kind == "json":
                schema = params.json if not isinstance(params.json, str) else json.loads(params.json)
                check_enforceable(schema, field)
                return c.compile_json_schema(json.dumps(schema), any_whitespace=ws,
                                             strict_mode=True)
            if kind == "json_object":
                return c.compile_json_schema('{"type": "object"}', any_whitespace=ws)
            if kind == "regex":
                check_regex(params.regex, field)
                return c.compile_regex(params.regex)
            if kind == "choice":
                return c.compile_grammar(choice_grammar(params.choice))
            return c.compile_grammar(params.grammar)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError for bad input
            message = _XGR_PREFIX.sub("", str(e).strip()).strip()
            raise ValueError(f"{field} is not valid: {message}") from None


class Matcher:
    """One sequence's place in its grammar, and the bitmask of the tokens allowed next.

    Args:
        grammar: a compiled grammar (GrammarCompiler.compile).
        vocab_size: the compiler's vocab_size (the bitmask's width in bits, rounded up to 32).
    """

    def __init__(self, grammar, vocab_size: int) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(grammar)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.num_accepted = 0

    def fill_mask(self) -> torch.Tensor:
        """The tokens allowed next: int32 [ceil(vocab / 32)], bit t % 32 of word t // 32.

        NOTE: the same tensor, refilled at each call: the sampler copies it before the next.
        """
        self._matcher.fill_next_token_bitmask(self._bitmask)
        return self._bitmask[0]

    def advance(self, token: int) -> bool:
        """Accept the sampled `token`; True when the output is complete (the grammar ended).

        A token the grammar refuses cannot come from a masked row; if one does (a bug), it is
        logged and the request ends here (True), rather than running on unconstrained.
        """
        if not self._matcher.accept_token(token):
            logger.error("the grammar refused token %d after %d accepted tokens: the request "
                         "ends here", token, self.num_accepted)
            return True
        self.num_accepted += 1
        return self._matcher.is_terminated()


def choice_grammar(choices: tuple[str, ...]) -> str:
    """An EBNF grammar whose sentences are exactly `choices` (JSON string escapes)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def check_regex(pattern: str, field: str) -> None:
    """Raise ValueError naming `field` when `pattern` uses lookaround or backreferences."""
    bad = _UNSUPPORTED_REGEX.search(pattern)
    if bad:
        raise ValueError(f"{field}: this server cannot enforce {bad.group(0)!r} in a regex "
                         "(lookaround and backreferences are not supported)")


def check_enforceable(schema: Any, field: str, path: str = "") -> None:
    """Raise ValueError naming `field` and the place in the schema when the schema uses a
    keyword the grammar engine would silently ignore (so the output might not validate)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{field} is not valid: a schema at '{path or '/'}' must be an object "
                         f"or a bool, got {type(schema).__name__}")
    for keyword in UNSUPPORTED_KEYWORDS:
        if keyword in schema:
            raise ValueError(f"{field}: this server cannot enforce the JSON Schema keyword "
                             f"{keyword!r} (at '{path or '/'}')")
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise ValueError(f"{field}: this server cannot enforce the remote $ref {ref!r} "
                         f"(at '{path or '/'}'); inline it under $defs")
    if isinstance(schema.get("pattern"), str):
        check_regex(schema["pattern"], f"{field} (pattern at '{path or '/'}')")
    for keyword in _SCHEMA_MAPS:
        value = schema.get(keyword)
        if isinstance(value, dict):
            for name, sub in value.items():
                check_enforceable(sub, field, f"{path}/{keyword}/{name}")
    for keyword in _SCHEMA_LISTS:
        value = schema.get(keyword)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                check_enforceable(sub, field, f"{path}/{keyword}/{i}")
    for keyword in _SCHEMA_ONE:
        value = schema.get(keyword)
        if isinstance(value, (dict, bool)):
            check_enforceable(value, field, f"{path}/{keyword}")
        elif isinstance(value, list):  # items as a list (draft 4-2019)
            for i, sub in enumerate(value):
                check_enforceable(sub, field, f"{path}/{keyword}/{i}")
