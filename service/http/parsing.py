"""Reading image requests that come either as JSON (image in base64) or as a multipart upload, and the
request deadline.

Routes that accept both read the body themselves (FastAPI binds one content type per route); these
helpers give them the same validation, error bodies and OpenAPI description as a declared body.
"""

from __future__ import annotations

import math
import time
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.core.types import ImageInput
from service.errors import invalid
from service.http.schemas import ImageOptions

TIMEOUT_HEADER = "X-Request-Timeout"
IMAGE_PART = "image"
LIST_FIELDS = ("output_formats",)  # may repeat in a form, or hold comma-separated values
MAX_FORM_FIELDS = 64
O = TypeVar("O", bound=BaseModel)


def _validation_error(error: ValidationError, prefix: tuple = ("body",)) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (*prefix, *e["loc"])} for e in error.errors(include_url=False)])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def note_image(request: Request, image: ImageInput) -> None:
    """Put the image's size and media type (never its content) into the request's access log line."""
    fields = getattr(request.state, "log_fields", None)
    if fields is not None:
        fields.update(image_bytes=len(image.data), image_media_type=image.media_type)


async def read_image_request(request: Request, json_model: type[O], options_model: type[BaseModel]
                             ) -> tuple[BaseModel, ImageInput]:
    """(options, image) of a JSON body (``json_model``: options plus ``image`` in base64) or of a
    multipart form (the file in part ``image``, ``options_model`` and :class:`ImageOptions` fields as plain
    form fields). Schema errors raise :class:`RequestValidationError` (422); other problems 400."""
    media_type = _media_type(request)
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        raw = await request.body()
        try:
            body = json_model.model_validate_json(raw)
        except ValidationError as error:
            raise _validation_error(error) from None
        image = body.image.to_core()  # type: ignore[attr-defined]
        note_image(request, image)
        return body, image
    if media_type == "multipart/form-data":
        return await _read_multipart(request, options_model)
    raise invalid(f"Content-Type {media_type!r} is not accepted; send application/json or multipart/form-data",
                  "Content-Type")


async def _read_multipart(request: Request, options_model: type[BaseModel]) -> tuple[BaseModel, ImageInput]:
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        upload = form.get(IMAGE_PART)
        if not isinstance(upload, UploadFile):
            raise invalid("the form needs the image as a file part named 'image'", IMAGE_PART)
        image_fields: dict[str, object] = {}
        option_fields: dict[str, object] = {}
        for key in set(form.keys()) - {IMAGE_PART}:
            values = form.getlist(key)
            if any(isinstance(v, UploadFile) for v in values):
                raise invalid(f"form field {key!r} must be text, not a file", key)
            if key in LIST_FIELDS:
                value: object = [part.strip() for v in values for part in str(v).split(",") if part.strip()]
            else:
                value = values[-1]
            target = image_fields if key in ImageOptions.model_fields else option_fields
            target[key] = value
        if "media_type" not in image_fields and upload.content_type in ("image/png", "image/jpeg",
                                                                        "application/dicom"):
            image_fields["media_type"] = upload.content_type
        try:
            options = options_model.model_validate(option_fields)
            image_options = ImageOptions.model_validate(image_fields)
        except ValidationError as error:
            raise _validation_error(error) from None
        data = await upload.read()
    image = image_options.with_data(data, IMAGE_PART)
    note_image(request, image)
    return options, image


def request_deadline(request: Request, timeout_s: float | None = None) -> float | None:
    """``time.monotonic()`` by which the answer is due, from header ``X-Request-Timeout`` and/or the body's
    ``timeout_s`` (seconds; the shorter wins), counted from the request's arrival; None without either."""
    timeouts = [] if timeout_s is None else [timeout_s]
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise invalid(f"{TIMEOUT_HEADER} must be a positive number of seconds", TIMEOUT_HEADER)
        timeouts.append(seconds)
    if not timeouts:
        return None
    arrived = getattr(request.state, "arrived", None) or time.monotonic()
    return arrived + min(timeouts)


def image_request_openapi(json_model: type[BaseModel], options_model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route that reads its body with :func:`read_image_request`: the JSON schema
    by reference and the multipart form with its fields (models referenced here must be registered with
    :func:`service.http.app.openapi_schema`)."""
    form_properties: dict[str, object] = {IMAGE_PART: {"type": "string", "format": "binary",
                                                       "description": "the image file (PNG, JPEG or DICOM)"}}
    required = [IMAGE_PART]
    for model in (options_model, ImageOptions):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        form_properties.update(schema.get("properties", {}))
        required += schema.get("required", [])
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_properties,
                                           "required": required}},
    }}}
