"""Wire schemas of the OpenAI-compatible ``POST /v1/chat/completions``.

The model answers one question about one image, so a conversation maps to one :class:`AskRequest`: the
image is the one ``image_url`` data URL in the messages, the question the text of the last user message.
Unknown OpenAI parameters are ignored (as OpenAI-compatible servers do); what cannot be honoured (system
prompts, several images, remote URLs, ``n`` > 1) is refused with 400 and a message saying why.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.types import MEDIA_TYPES, AskRequest, AskResult, ImageInput
from service.errors import invalid
from service.http.schemas import AskResponseBody, ImageOptions, decode_base64

_DATA_URL = re.compile(r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$",
                       re.DOTALL)
_FINISH_REASONS = {"stop": "stop", "length": "length"}  # "abort" only happens once nobody listens: "stop"


class ImageUrl(BaseModel):
    """OpenAI's image reference; only ``data:`` URLs are accepted (no outbound fetches)."""

    url: str
    detail: str | None = None


class TextPart(BaseModel):
    """A text part of a message."""

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    """An image part of a message."""

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


def image_from_data_url(url: str, field: str) -> ImageInput:
    """The core's ImageInput from ``data:<media type>;base64,<data>``; remote URLs are refused."""
    if url.startswith(("http://", "https://")):
        raise invalid("remote image URLs are not fetched; send the image inline as a data URL "
                      "(data:image/png;base64,...)", field)
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid("image_url must be a base64 data URL: data:<media type>;base64,<data>", field)
    media_type = match.group("media_type").lower()
    if media_type not in MEDIA_TYPES:
        raise invalid(f"image media type {media_type!r} is not one of {', '.join(MEDIA_TYPES)}", field)
    return ImageOptions(media_type=media_type).with_data(decode_base64(match.group("data"), field), field)


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that a one-image VQA model can honour."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("", description="a served VQA model (GET /v1/models); empty = the default")
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = Field(None, description="wins over max_tokens when both are given")
    temperature: float | None = Field(None, description="default 0 (greedy), unlike OpenAI's 1")
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def to_core(self, request_id: str = "", deadline: float | None = None) -> AskRequest:
        """The one :class:`AskRequest` this conversation asks; INVALID_ARGUMENT naming the message at fault
        for what the model cannot do."""
        if self.n not in (None, 1):
            raise invalid("n must be 1: the service returns one answer per request", "n")
        image = None
        question = None
        for m_index, message in enumerate(self.messages):
            where = f"messages[{m_index}]"
            if message.role in ("system", "developer"):
                raise invalid(f"{message.role} messages are not supported: the model was trained with its own "
                              "prompt; put the question in a user message", f"{where}.role")
            if message.role not in ("user", "assistant"):
                raise invalid(f"role {message.role!r} is not supported (user and assistant only)", f"{where}.role")
            parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else (
                message.content or [])
            texts = []
            for p_index, part in enumerate(parts):
                if isinstance(part, ImagePart):
                    field = f"{where}.content[{p_index}].image_url.url"
                    if image is not None:
                        raise invalid("only one image per request is supported", field)
                    image = image_from_data_url(part.image_url.url, field)
                else:
                    texts.append(part.text)
            if message.role == "user":
                question = "\n".join(t for t in texts if t.strip())
        if self.messages[-1].role != "user":
            raise invalid("the last message must be the user's question", f"messages[{len(self.messages) - 1}].role")
        if image is None:
            raise invalid("the request needs one image: a user message part of type image_url with a data URL",
                          "messages")
        return AskRequest(image=image, question=question or "", model=self.model,
                          max_tokens=self.max_completion_tokens or self.max_tokens or 0,
                          temperature=0.0 if self.temperature is None else self.temperature, seed=self.seed,
                          request_id=request_id, deadline=deadline)


class ChatCompletionMessage(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """The one choice of a completion."""

    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str


class ChatUsage(BaseModel):
    """OpenAI's token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """OpenAI's chat completion, with MedCLM's full result (findings, grounding) under ``medclm``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    medclm: AskResponseBody | None = None

    @classmethod
    def from_core(cls, result: AskResult, completion_id: str) -> ChatCompletionResponse:
        """From the core's :class:`AskResult`; the message content is the model's whole text."""
        usage = result.usage
        return cls(id=completion_id, created=int(time.time()), model=result.model,
                   choices=[ChatChoice(message=ChatCompletionMessage(content=result.text),
                                       finish_reason=finish_reason(result.finish_reason))],
                   usage=ChatUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                   total_tokens=usage.prompt_tokens + usage.completion_tokens),
                   medclm=AskResponseBody.from_core(result))


def finish_reason(core_reason: str) -> str:
    """The core's stop | length | abort as an OpenAI finish reason."""
    return _FINISH_REASONS.get(core_reason, "stop")


def completion_chunk(completion_id: str, created: int, model: str, delta: dict, reason: str | None = None,
                     usage: dict | None = None, choices: bool = True) -> dict:
    """One ``chat.completion.chunk`` object of a streamed completion."""
    chunk: dict = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": reason}] if choices else []}
    if usage is not None:
        chunk["usage"] = usage
    return chunk
