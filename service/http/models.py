"""``GET /v1/models``: the served models in OpenAI's list shape, with MedCLM's fields."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ErrorCode, ServiceError
from service.http.dependencies import core_of
from service.http.schemas import ERROR_RESPONSES, ModelCard, ModelList

router = APIRouter(tags=["models"])


def _created(request: Request) -> int:
    return int(request.app.state.started_at)


@router.get("/v1/models", response_model=ModelList, summary="List the served models")
async def list_models(request: Request) -> ModelList:
    """Every served model (VQA and segmentation) with precision, modalities, fingerprint and readiness."""
    created = _created(request)
    return ModelList(data=[ModelCard.from_core(m, created) for m in core_of(request).list_models()])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses={404: ERROR_RESPONSES[404]},
            summary="One served model")
async def get_model(model_id: str, request: Request) -> ModelCard:
    """The model named ``model_id``; 404 NOT_FOUND when it is not served."""
    for info in core_of(request).list_models():
        if info.name == model_id:
            return ModelCard.from_core(info, _created(request))
    raise ServiceError(ErrorCode.NOT_FOUND, f"model {model_id!r} is not served", "model_id")
