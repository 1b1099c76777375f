"""Build the pipeline's engines from the settings: which implementation serves which repository model."""

from __future__ import annotations

import logging

from service.config import Settings
from service.core.pipeline import Pipeline
from service.core.registry import RepositoryModel, segmenter_model, vqa_model
from service.errors import ServiceError
from service.metrics import ServiceMetrics

from training.data.anatomy import MODALITIES
from training.medclm.export import model_name as vqa_model_name

log = logging.getLogger("medclm.engines")


def _vqa_engine(settings: Settings, name: str, metrics: ServiceMetrics):
    if settings.vqa_engine == "vllm-remote":
        from service.engines.vllm_remote import RemoteVllmEngine

        if not settings.vllm_remote_url:
            raise ValueError("vqa_engine=vllm-remote needs vllm_remote_url (MEDCLM_VLLM_REMOTE_URL)")
        return RemoteVllmEngine(settings.vllm_remote_url, name)
    from service.engines.vllm_local import LocalVllmEngine

    return LocalVllmEngine(settings.model_repository, name, threads=settings.vllm_threads,
                           max_model_len=settings.vllm_max_model_len, metrics=metrics)


def _segmentation_engine(settings: Settings, metrics: ServiceMetrics, variants: list[str]):
    if settings.segmentation_engine == "triton":
        from service.engines.triton_remote import TritonSegmentationEngine

        if not settings.triton_url:
            raise ValueError("segmentation_engine=triton needs triton_url (MEDCLM_TRITON_URL)")
        return TritonSegmentationEngine(settings.triton_url, settings.triton_protocol, settings.model_repository,
                                        variants=variants, batching=settings.batching,
                                        max_batch_size=settings.max_batch_size,
                                        max_queue_delay_ms=settings.max_queue_delay_ms, metrics=metrics)
    from service.engines.onnx_local import OnnxSegmentationEngine

    return OnnxSegmentationEngine(settings.model_repository, variants, threads=settings.onnx_threads,
                                  batching=settings.batching, max_batch_size=settings.max_batch_size,
                                  max_queue_delay_ms=settings.max_queue_delay_ms, metrics=metrics)


def build_pipeline(settings: Settings, metrics: ServiceMetrics) -> Pipeline:
    """The pipeline with one VQA engine per served variant and one segmentation engine for all segmenters.

    A model missing from the repository does not stop the service: it is reported as a problem, its engine
    is built anyway, and the service stays not-ready (503 / UNAVAILABLE) until the pipeline's supervisor
    finds the files and loads them, as a PACS-side operator would want to see.
    """
    problems: list[str] = []
    vqa_models: dict[str, RepositoryModel] = {}
    for precision in settings.vqa_variants:
        try:
            model = vqa_model(settings.model_repository, settings.vqa_model, precision)
            vqa_models[model.name] = model
        except ServiceError as exc:
            problems.append(exc.message)
    segmenters: dict[str, RepositoryModel] = {}
    for precision in settings.segmenter_variants:
        for modality in MODALITIES:
            try:
                model = segmenter_model(settings.model_repository, modality, precision)
                segmenters[model.name] = model
            except ServiceError as exc:
                problems.append(exc.message)
    for problem in problems:
        log.error("model repository problem: %s", problem)
    names = [vqa_model_name(settings.vqa_model, precision) for precision in settings.vqa_variants]
    engines = {name: _vqa_engine(settings, name, metrics) for name in names}
    segmentation = (_segmentation_engine(settings, metrics, settings.segmenter_variants)
                    if settings.segmenter_variants else None)
    return Pipeline(settings, engines, vqa_models, segmentation, segmenters, metrics, problems)
