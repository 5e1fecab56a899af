"""Turns a growing list of token ids into text deltas, and ends the text at a stop string.

Byte-level tokenizers split one UTF-8 character across tokens; decoding such a prefix yields
"\ufffd". Like TGI and vLLM, the decoder keeps a window of recent tokens and holds text back
until the window decodes without a trailing replacement character. Decoding starts from the
last prompt tokens so that a leading space is kept by tokenizers that drop it at a start.

Stop strings are trimmed from the output, as OpenAI does; while a stream runs, the last
`len(longest stop) - 1` characters are held back, since they may be the start of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_PROMPT_CONTEXT = 5  # prompt tokens decoded with the output, for the spacing of the first one


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        stop: Sequence[str],
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._token_ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)
        self._stop = tuple(s for s in stop if s)
        self._hold_back = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""  # the output so far, stop string excluded
        self._num_emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """The text that may be handed out after this token ("" while held back)."""
        self._token_ids.append(token_id)
        self.text += self._decode_new()
        searched_from = max(self._num_emitted - self._hold_back, 0)
        for stop in self._stop:
            found = self.text.find(stop, searched_from)
            if found != -1:
                self.text = self.text[:found]
                self.stopped = True
        ready = len(self.text) if self.stopped else len(self.text) - self._hold_back
        return self._emit(ready)

    def flush(self) -> str:
        """At the end: whatever is left, held-back characters and an unfinished character."""
        if not self.stopped:
            tail = self._decode(self._token_ids[self._prefix_offset :])
            head = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
            self.text += tail[len(head) :]
        return self._emit(len(self.text))

    def _decode_new(self) -> str:
        head = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._token_ids[self._prefix_offset :])
        if len(full) <= len(head) or full.endswith("\ufffd"):
            return ""  # nothing yet, or half a character: wait for the next token
        self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        return full[len(head) :]

    def _decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def _emit(self, upto: int) -> str:
        if upto <= self._num_emitted:
            return ""
        delta = self.text[self._num_emitted : upto]
        self._num_emitted = upto
        return delta
