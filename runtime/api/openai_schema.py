"""The OpenAI request bodies, as `vllm serve` reads them: validated by pydantic, so a bad field is
a 400 naming it. A field the runtime does not honour is refused, never ignored (fields.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.base import SamplingParams, StructuredOutput
from runtime.api.schema import MAX_CHOICES, MAX_LOGPROBS, Stop, stop_tuple
from runtime.errors import bad_request


class OpenAIBody(BaseModel):
    # Extra fields are kept, to be refused by name (or let through as harmless noise).
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StreamOptions(OpenAIBody):
    include_usage: bool = False


class JsonSchemaFormat(OpenAIBody):
    name: str = "response"
    json_schema: dict[str, Any] | bool = Field(default=True, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(OpenAIBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(OpenAIBody):
    """vLLM's `structured_outputs` extra: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class OpenAISampling(OpenAIBody):
    """Sampling fields the OpenAI chat and completions APIs share (vLLM's extras included)."""

    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=100)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: Stop = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    ignore_eos: bool = False
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None

    def sampling(
        self,
        max_tokens: int,
        logprobs: int | None,
        defaults: Mapping[str, Any] | None = None,
        structured: StructuredOutput | None = None,
    ) -> SamplingParams:
        """The request's sampling; a field it leaves out takes `defaults` (the model's, from
        its generation config, as `vllm serve` applies them), else the neutral value."""
        defaults = defaults or {}

        def value(name: str, neutral: Any) -> Any:
            given = getattr(self, name)
            return given if given is not None else defaults.get(name, neutral)

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=value("temperature", 1.0),
            top_p=value("top_p", 1.0),
            top_k=max(value("top_k", 0), 0),
            min_p=value("min_p", 0.0),
            seed=self.seed,
            stop=stop_tuple(self.stop),
            presence_penalty=value("presence_penalty", 0.0),
            frequency_penalty=value("frequency_penalty", 0.0),
            repetition_penalty=value("repetition_penalty", 1.0),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            structured=structured if structured is not None else self.structured(),
        )

    def structured(self) -> StructuredOutput | None:
        """The output constraint `response_format` or `structured_outputs` asks for."""
        given, form = self.structured_outputs, self.response_format
        if given is not None and form is not None and form.type != "text":
            raise bad_request(
                "response_format and structured_outputs each constrain the output: send one of "
                "them",
                param="structured_outputs",
            )
        if given is not None:
            try:
                return StructuredOutput(
                    json_schema=given.json_,
                    json_object=bool(given.json_object),
                    regex=given.regex,
                    choice=tuple(given.choice) if given.choice is not None else None,
                    grammar=given.grammar,
                )
            except ValueError:
                raise bad_request(
                    "structured_outputs must name exactly one of json, regex, choice, grammar "
                    "and json_object",
                    param="structured_outputs",
                ) from None
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return StructuredOutput(json_object=True)
        if form.json_schema is None:
            raise bad_request(
                "response_format of type json_schema needs its json_schema",
                param="response_format.json_schema",
            )
        schema = form.json_schema.json_schema
        return StructuredOutput(json_schema=schema if isinstance(schema, dict) else {})

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionDefinition(OpenAIBody):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBody):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(OpenAIBody):
    name: str


class NamedToolChoice(OpenAIBody):
    type: Literal["function"] = "function"
    function: FunctionName


class ChatMessage(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message answers this call
    reasoning: str | None = None


class ChatCompletionRequest(OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False  # the last message's content starts the answer (with continuation)
    include_reasoning: bool = True

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """`auto` when tools come without a choice, as OpenAI and vLLM have it."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"


class CompletionRequest(OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt
