"""Structured output for our engine, with xgrammar (the library vLLM's default backend uses).

A request's constraint is compiled once (compiled grammars are cached by constraint) into a
matcher of its own. Each step, the constrained rows' logits are masked to the tokens their
grammar allows, in one batched call; after sampling, each matcher accepts its row's token. Rows
without a constraint are not touched, so they cost nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch

from processors.base import ProcessorInputError, StructuredOutput


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe (compiling runs off the engine)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _xgrammar(self) -> Any:
        with self._lock:  # building the tokenizer's info takes a second: once, on first use
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size
                )
                self._compiler = xgr.GrammarCompiler(info)
            return self._compiler

    def compile(self, structured: StructuredOutput) -> Any:
        """A fresh matcher for `structured`; ProcessorInputError naming what cannot compile."""
        import xgrammar as xgr

        compiler = self._xgrammar()
        try:
            if structured.json_schema is not None:
                schema = structured.json_schema
                text = schema if isinstance(schema, str) else json.dumps(schema)
                compiled = compiler.compile_json_schema(text)
            elif structured.json_object:
                compiled = compiler.compile_builtin_json_grammar()
            elif structured.regex is not None:
                compiled = compiler.compile_regex(structured.regex)
            elif structured.choice is not None:
                compiled = compiler.compile_grammar(choice_grammar(structured.choice))
            else:
                compiled = compiler.compile_grammar(str(structured.grammar))
        except Exception as exc:  # xgrammar raises RuntimeError or its own errors
            what = _what(structured)
            raise ProcessorInputError(f"the {what} cannot be compiled: {exc}") from None
        return xgr.GrammarMatcher(compiled)


def choice_grammar(choices: Sequence[str]) -> str:
    """An EBNF grammar matching exactly one of `choices`."""
    if not choices:
        raise ProcessorInputError("choice must name at least one string")
    return "root ::= " + " | ".join(json.dumps(choice) for choice in choices)


def mask_logits(logits: torch.Tensor, matchers: Sequence[Any]) -> torch.Tensor:
    """logits [B, V] with each constrained row (a matcher, None for free rows) limited to the
    tokens its grammar allows next."""
    import xgrammar as xgr

    rows = [i for i, matcher in enumerate(matchers) if matcher is not None]
    if not rows:
        return logits
    logits = logits.float().clone()
    bitmask = xgr.allocate_token_bitmask(len(matchers), logits.shape[-1])
    for i in rows:
        matchers[i].fill_next_token_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
    return logits


def _what(structured: StructuredOutput) -> str:
    if structured.json_schema is not None:
        return "JSON schema"
    if structured.regex is not None:
        return "regular expression"
    if structured.choice is not None:
        return "choice"
    return "grammar"
