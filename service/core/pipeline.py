"""The service's one pipeline: check the request, decode the image, run the engines, read and ground the
answer. Both transports call it through :class:`service.core.api.ServiceCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import AsyncIterator

from training.data.anatomy import MODALITIES
from training.data.boxes import snap_boxes
from training.medclm.export import model_name as vqa_model_name
from training.medclm.prompts import build_messages

from service.config import Settings
from service.core.admission import AdmissionGate
from service.core.grounding import check_grounding
from service.core.masks import organ_masks
from service.core.output import parse_output
from service.core.registry import RepositoryModel, segmenter_model, vqa_model
from service.core.supervisor import EngineSupervisor, Recoverable
from service.core.types import (MASK_FORMATS, OUTPUT_FORMATS, SEGMENTER_PRECISIONS, VQA_PRECISIONS, AskEvent,
                                AskRequest, AskResult, DecodedImage, DicomOutput, Finding, ImageInput, ModelInfo,
                                SegmentRequest, SegmentResult, Timings, Usage)
from service.engines.base import GenerationParams, SegmentationEngine, VqaEngine
from service.errors import ErrorCode, ServiceError, invalid
from service.imaging.decode import decode_image
from service.imaging.model_view import box_norm_to_px, model_view_image
from service.imaging.windowing import ABDOMEN_WINDOW
from service.logging import hash_identifier, note_request
from service.metrics import ServiceMetrics
from service.pacs.dicomweb import DicomWebAccess
from service.pacs.outputs import check_output_formats, to_output, wants_dicom
from service.pacs.seg import build_segmentation
from service.pacs.source import ModelIdentity, check_source
from service.pacs.sr import build_report

log = logging.getLogger("medclm.pipeline")
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 2.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def remaining_seconds(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (time.monotonic based); DEADLINE_EXCEEDED when none are left."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ServiceError(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed before it could be served")
    return left


def segmenter_input(decoded: DecodedImage):
    """Pixels in the units the organ segmenter was trained on. An 8-bit CT (already a display image) is
    mapped back through the abdomen window, so the segmenter's own windowing reproduces it."""
    if decoded.modality == "ct" and decoded.source != "dicom" and decoded.pixels.max(initial=0) <= 255 \
            and (decoded.pixels == decoded.display).all():
        low = ABDOMEN_WINDOW.center - ABDOMEN_WINDOW.width / 2
        return decoded.display.astype("float32") / 255.0 * ABDOMEN_WINDOW.width + low
    return decoded.pixels


def seg_output(decoded: DecodedImage, labels, segmenter: RepositoryModel, frame: int) -> DicomOutput:
    """The DICOM SEG of ``labels`` (the segmenter's label map of ``decoded``), encoded."""
    segmentation = build_segmentation(decoded.dicom, labels, decoded.modality,
                                      ModelIdentity(segmenter.name, segmenter.fingerprint), frame=frame)
    return to_output("dicom-seg", segmentation)


class Pipeline:
    """Implements :class:`service.core.api.ServiceCore` over one set of engines."""

    def __init__(self, settings: Settings, vqa_engines: dict[str, VqaEngine], vqa_models: dict[str, RepositoryModel],
                 segmentation: SegmentationEngine | None, segmenter_models: dict[str, RepositoryModel],
                 metrics: ServiceMetrics | None = None, problems: list[str] | None = None):
        self.settings = settings
        self.vqa_engines = vqa_engines
        self.vqa_models = vqa_models
        self.segmentation = segmentation
        self.segmenter_models = segmenter_models
        self.metrics = metrics or ServiceMetrics()
        self.problems = list(problems or [])  # configuration problems found at build time (missing models)
        self.draining = False
        self.vqa_gates = {name: AdmissionGate(name, settings.vqa_max_running, settings.vqa_max_waiting)
                          for name in vqa_engines}
        self.segment_gate = AdmissionGate("the organ segmenter", settings.segment_max_running,
                                          settings.segment_max_waiting)
        for gate_name, gate in [*self.vqa_gates.items(), ("segmentation", self.segment_gate)]:
            self.metrics.admission.labels(gate=gate_name, state="running").set_function(
                lambda g=gate: g.admitted - g.waiting)
            self.metrics.admission.labels(gate=gate_name, state="waiting").set_function(lambda g=gate: g.waiting)
        self.supervisor: EngineSupervisor | None = None
        self.dicomweb = DicomWebAccess(settings.dicomweb_allowed_hosts, settings.dicomweb_timeout_s,
                                       settings.max_request_bytes)

    # --- lifecycle ---
    def _engines(self) -> dict[str, object]:
        engines: dict[str, object] = dict(self.vqa_engines)
        if self.segmentation is not None:
            engines["segmentation"] = self.segmentation
        return engines

    async def start(self) -> None:
        """Start every engine; one that fails to start leaves the service up but not ready, and the
        supervisor keeps trying to bring it (and any engine that goes down later) back."""
        engines = self._engines()
        results = await asyncio.gather(*(e.start() for e in engines.values()), return_exceptions=True)
        for name, result in zip(engines, results):
            if isinstance(result, BaseException):
                log.error("engine %s failed to start: %s", name, result)
                self.problems.append(f"engine {name} failed to start: {result}")
        self._publish_readiness()
        recoverable = {name: e for name, e in engines.items() if isinstance(e, Recoverable)}
        if recoverable:
            self.supervisor = EngineSupervisor(recoverable, self.metrics,
                                               max_backoff_s=self.settings.recovery_max_backoff_s,
                                               after_attempt=self.refresh_repository)
            self.supervisor.start()

    async def close(self) -> None:
        """Stop the supervisor, then close every engine."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        await asyncio.gather(*(e.close() for e in self._engines().values()), return_exceptions=True)

    def refresh_repository(self) -> None:
        """Look again for configured models that were missing from the repository; add those now there."""
        for precision in self.settings.vqa_variants:
            name = vqa_model_name(self.settings.vqa_model, precision)
            if name in self.vqa_engines and name not in self.vqa_models:
                with contextlib.suppress(ServiceError):
                    self.vqa_models[name] = vqa_model(self.settings.model_repository, self.settings.vqa_model,
                                                      precision)
        if self.segmentation is None:
            return
        for precision in self.settings.segmenter_variants:
            for modality in MODALITIES:
                try:
                    model = segmenter_model(self.settings.model_repository, modality, precision)
                except ServiceError:
                    continue
                self.segmenter_models.setdefault(model.name, model)
        self._publish_readiness()

    def start_draining(self) -> None:
        """Stop admitting requests (readiness turns false); in-flight requests continue."""
        self.draining = True

    def in_flight(self) -> int:
        """Requests admitted and not finished yet (running or waiting for a slot), over every engine."""
        return sum(g.admitted for g in self.vqa_gates.values()) + self.segment_gate.admitted

    def live(self) -> bool:
        """The process is up."""
        return True

    def ready(self) -> bool:
        """Every configured engine can serve (at least one is configured) and the service is not draining."""
        engines = self._engines()
        return bool(engines) and all(e.ready() for e in engines.values()) and not self.draining

    def _publish_readiness(self) -> None:
        for name, engine in self.vqa_engines.items():
            self.metrics.engine_ready.labels(model=name).set(1 if engine.ready() else 0)
        if self.segmentation is not None:
            for name in self.segmenter_models:
                self.metrics.engine_ready.labels(model=name).set(1 if self.segmentation.ready() else 0)

    def list_models(self) -> list[ModelInfo]:
        """Every served model with its readiness."""
        self._publish_readiness()
        infos = [ModelInfo(m.name, m.kind, m.precision, list(m.modalities), m.fingerprint,
                           self.vqa_engines[m.name].ready(), self.settings.vqa_engine)
                 for m in self.vqa_models.values()]
        seg_ready = self.segmentation is not None and self.segmentation.ready()
        infos += [ModelInfo(m.name, m.kind, m.precision, list(m.modalities), m.fingerprint, seg_ready,
                            self.settings.segmentation_engine) for m in self.segmenter_models.values()]
        return infos

    # --- request checks ---
    def _admit(self) -> None:
        if self.draining:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the service is shutting down", retry_after=1.0)

    def _vqa_model(self, request: AskRequest) -> RepositoryModel:
        if request.precision and request.precision not in VQA_PRECISIONS:
            raise invalid(f"precision {request.precision!r} is not one of {', '.join(VQA_PRECISIONS)}", "precision")
        if request.model:
            model = self.vqa_models.get(request.model)
            if model is None and request.model in self.vqa_engines:  # configured, missing from the repository
                raise ServiceError(ErrorCode.UNAVAILABLE, f"model {request.model!r} is missing from the model "
                                   "repository; the service loads it once it is there", "model", retry_after=5.0)
            if model is None:
                raise ServiceError(ErrorCode.NOT_FOUND, f"model {request.model!r} is not served; served VQA "
                                   f"models: {', '.join(self.vqa_models) or 'none'}", "model")
            if request.precision and request.precision != model.precision:
                raise invalid(f"model {model.name!r} is the {model.precision} variant, not {request.precision}",
                              "precision")
            return model
        precision = request.precision or "fp32"
        for model in self.vqa_models.values():
            if model.precision == precision:
                return model
        if vqa_model_name(self.settings.vqa_model, precision) in self.vqa_engines:  # configured, not there yet
            raise ServiceError(ErrorCode.UNAVAILABLE, f"the {precision} VQA model is missing from the model "
                               "repository; the service loads it once it is there", retry_after=5.0)
        raise ServiceError(ErrorCode.NOT_FOUND, f"no {precision} VQA variant is served (served: "
                           f"{', '.join(m.precision for m in self.vqa_models.values()) or 'none'})", "precision")

    def _params(self, request: AskRequest) -> GenerationParams:
        cap = self.settings.max_tokens_cap
        max_tokens = request.max_tokens or min(self.settings.default_max_tokens, cap)
        if not 1 <= max_tokens <= cap:
            raise invalid(f"max_tokens must be between 1 and {cap}", "max_tokens")
        if not (math.isfinite(request.temperature) and 0.0 <= request.temperature <= MAX_TEMPERATURE):
            raise invalid(f"temperature must be a number between 0 and {MAX_TEMPERATURE}", "temperature")
        if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
            raise invalid("seed must be between 0 and 2^63-1", "seed")
        return GenerationParams(max_tokens=max_tokens, temperature=request.temperature, seed=request.seed)

    def _question(self, question: str) -> str:
        text = (question or "").strip()
        if not text:
            raise invalid("question is empty", "question")
        if len(text) > self.settings.max_question_chars:
            raise invalid(f"question is longer than {self.settings.max_question_chars} characters", "question")
        if any(ord(c) < 32 and c not in "\n\t" for c in text):
            raise invalid("question holds control characters", "question")
        return text

    def _output_formats(self, image: ImageInput, formats, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
        """The request's output formats, checked, and the image source checked against them: DICOM outputs
        need a DICOM input, and a DICOMweb reference must name an allowed server and valid UIDs."""
        chosen = check_output_formats(formats, allowed, what)
        if image.dicomweb is not None:
            if image.data:
                raise invalid("give the image either as data or as a DICOMweb reference, not both", "image")
            self.dicomweb.check(image.dicomweb)
        elif wants_dicom(chosen) and image.media_type != "application/dicom":
            raise invalid(f"{', '.join(f for f in chosen if f != 'json')} need a DICOM input; the image is "
                          f"{image.media_type or 'of no declared type'}", "output_formats")
        if image.dicomweb is not None and image.dicomweb.store_results and not wants_dicom(chosen):
            raise invalid("store_results needs a DICOM output format (dicom-seg or dicom-sr) to store",
                          "image.dicomweb.store_results")
        return chosen

    async def _decode(self, request_image: ImageInput, deadline: float | None) -> tuple[DecodedImage, float]:
        remaining_seconds(deadline)
        started = time.perf_counter()
        if request_image.dicomweb is not None:  # WADO-RS first: the instance is the image
            data = await self._within(deadline, self.dicomweb.retrieve_instance(request_image.dicomweb),
                                      "while fetching the image by DICOMweb")
            request_image = ImageInput(data=data, media_type="application/dicom", frame=request_image.frame,
                                       modality=request_image.modality, dicomweb=request_image.dicomweb)
        decoded = await asyncio.to_thread(decode_image, request_image, self.settings.max_image_pixels)
        self._note_image(decoded)
        return decoded, time.perf_counter() - started

    @staticmethod
    async def _within(deadline: float | None, awaitable, what: str):
        """``awaitable`` bounded by the request deadline (DEADLINE_EXCEEDED naming ``what`` when it passes)."""
        try:
            async with asyncio.timeout(remaining_seconds(deadline)):
                return await awaitable
        except TimeoutError as exc:
            raise ServiceError(ErrorCode.DEADLINE_EXCEEDED, f"the request deadline passed {what}") from exc

    async def _store(self, image: ImageInput, outputs: list[DicomOutput], deadline: float | None) -> None:
        """STOW-RS the DICOM outputs back to the DICOMweb server the image came from, when asked to."""
        reference = image.dicomweb
        if reference is None or not reference.store_results or not outputs:
            return
        await self._within(deadline, self.dicomweb.store(reference.base_url, [o.data for o in outputs]),
                           "while storing the results by DICOMweb")
        for output in outputs:
            output.stored = True

    def _note_image(self, decoded: DecodedImage) -> None:
        """Access-log fields about the image that carry no patient data: the modality, and the study only
        as a salted hash (to link requests about one study without its UID)."""
        fields = {"modality": decoded.modality}
        study = getattr(decoded.dicom, "StudyInstanceUID", None) if decoded.dicom is not None else None
        if study:
            fields["study_hash"] = hash_identifier(str(study), self.settings.log_hash_salt.get_secret_value())
        note_request(**fields)

    # --- VQA ---
    async def ask(self, request: AskRequest) -> AskResult:
        """Answer one question (the streamed generation, collected)."""
        async with contextlib.aclosing(self.ask_stream(request)) as events:
            async for event in events:
                if event.result is not None:
                    return event.result
        raise ServiceError(ErrorCode.INTERNAL, "the generation ended without a result")

    async def ask_stream(self, request: AskRequest) -> AsyncIterator[AskEvent]:
        """Text deltas as they come, then the final result; closing the stream aborts the generation."""
        arrived = time.perf_counter()
        self._admit()
        request_id = request.request_id or uuid.uuid4().hex
        question = self._question(request.question)
        if self.settings.log_request_text:  # off by default: a question may name the patient
            note_request(question=question)
        model = self._vqa_model(request)
        params = self._params(request)
        formats = self._output_formats(request.image, request.output_formats, OUTPUT_FORMATS, "Ask")
        engine = self.vqa_engines[model.name]
        if not engine.ready():
            raise ServiceError(ErrorCode.UNAVAILABLE, f"model {model.name} is not ready", retry_after=5.0)
        gate = self.vqa_gates[model.name]
        gate.admit()  # before any decoding: overload is refused at the cost of a counter
        try:
            async with gate.running(request.deadline):
                waited = time.perf_counter() - arrived
                self.metrics.queue.labels(model=model.name).observe(waited)
                async with contextlib.aclosing(self._generate(request, request_id, question, model, params, engine,
                                                              formats, arrived, waited)) as events:
                    async for event in events:
                        yield event
        finally:
            gate.release()

    async def _generate(self, request: AskRequest, request_id: str, question: str, model: RepositoryModel,
                        params: GenerationParams, engine: VqaEngine, formats: tuple[str, ...], arrived: float,
                        waited: float) -> AsyncIterator[AskEvent]:
        decoded, preprocess = await self._decode(request.image, request.deadline)
        if decoded.modality not in model.modalities:
            raise invalid(f"modality {decoded.modality.upper()} is not supported by {model.name} (trained on "
                          f"{', '.join(m.upper() for m in model.modalities)})", "image")
        seg_model = None
        if "dicom-seg" in formats or (request.verify_grounding and self.segmentation is not None):
            seg_model = self._segmenter_for(decoded.modality, "fp32", required="dicom-seg" in formats)
        if wants_dicom(formats):  # refuse before generating, not after
            check_source(decoded.dicom)
        image = model_view_image(decoded)
        if model.box_grid:  # a box typed off the grid would tokenize as digits this model never read as a box
            question = snap_boxes(question, model.box_grid)
        messages = build_messages(question, reasoning=request.reasoning)

        timings = Timings(queue_ms=_ms(waited), preprocess_ms=_ms(preprocess))
        text_parts: list[str] = []
        usage, finish_reason = Usage(), ""
        submitted = time.perf_counter()
        first_token_at = None
        remaining = remaining_seconds(request.deadline)
        try:
            async with asyncio.timeout(remaining):
                async with contextlib.aclosing(engine.generate(messages, image, params, request_id)) as chunks:
                    async for chunk in chunks:
                        if chunk.delta:
                            if first_token_at is None:
                                first_token_at = time.perf_counter()
                            text_parts.append(chunk.delta)
                            yield AskEvent(delta=chunk.delta)
                        usage = Usage(chunk.prompt_tokens, chunk.completion_tokens)
                        if chunk.finished:
                            finish_reason = chunk.finish_reason or "stop"
        except TimeoutError as exc:
            raise ServiceError(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed during generation") from exc
        finished = time.perf_counter()
        timings.engine_ms = _ms(finished - submitted)
        timings.time_to_first_token_ms = _ms((first_token_at or finished) - submitted)
        self.metrics.engine.labels(model=model.name).observe(finished - submitted)
        self.metrics.ttft.labels(model=model.name).observe((first_token_at or finished) - submitted)
        self.metrics.tokens.labels(model=model.name, kind="prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(model=model.name, kind="completion").inc(usage.completion_tokens)

        text = "".join(text_parts)
        parsed = parse_output(text)
        findings = [Finding(label=b.label, organ=b.organ, box_norm=b.box_norm,
                            box_px=box_norm_to_px(b.box_norm, decoded.width, decoded.height)) for b in parsed.boxes]
        grounding, labels = [], None
        verify = request.verify_grounding and bool(findings)
        if seg_model is not None and (verify or "dicom-seg" in formats):
            started = time.perf_counter()
            labels = await self.segmentation.segment(seg_model.name, segmenter_input(decoded), decoded.modality,
                                                     request.deadline)
            if verify:
                grounding = check_grounding(findings, labels)
            timings.grounding_ms = _ms(time.perf_counter() - started)
        result = AskResult(
            request_id=request_id, model=model.name, fingerprint=model.fingerprint, answer=parsed.answer,
            reasoning_steps=parsed.reasoning_steps, text=text, findings=findings, grounding=grounding, usage=usage,
            timings=timings, finish_reason=finish_reason or "stop", modality=decoded.modality,
            width=decoded.width, height=decoded.height)
        if wants_dicom(formats):
            result.dicom_outputs = await asyncio.to_thread(
                self._ask_outputs, formats, decoded, request, question, result, labels, seg_model)
            await self._store(request.image, result.dicom_outputs, request.deadline)
        timings.total_ms = _ms(time.perf_counter() - arrived)
        yield AskEvent(result=result)

    @staticmethod
    def _ask_outputs(formats: tuple[str, ...], decoded: DecodedImage, request: AskRequest, question: str,
                     result: AskResult, labels, seg_model: RepositoryModel | None) -> list[DicomOutput]:
        """The DICOM objects an Ask asked for, in request order: the SR of the answer, the SEG of the organs."""
        outputs = []
        for name in formats:
            if name == "dicom-sr":
                report = build_report(decoded.dicom, question=question, answer=result.answer,
                                      reasoning_steps=result.reasoning_steps, findings=result.findings,
                                      modality=decoded.modality, model=ModelIdentity(result.model, result.fingerprint),
                                      frame=request.image.frame)
                outputs.append(to_output(name, report))
            elif name == "dicom-seg" and seg_model is not None and labels is not None:
                outputs.append(seg_output(decoded, labels, seg_model, request.image.frame))
        return outputs

    # --- segmentation ---
    def _segmenter_for(self, modality: str, precision: str, required: bool = True) -> RepositoryModel | None:
        for model in self.segmenter_models.values():
            if model.precision == precision and modality in model.modalities:
                return model
        if not required:
            return None
        if not any(modality in m.modalities for m in self.segmenter_models.values()):
            served = sorted({m.upper() for s in self.segmenter_models.values() for m in s.modalities})
            raise invalid(f"no organ segmenter for modality {modality.upper()} (served: {', '.join(served)})", "image")
        raise ServiceError(ErrorCode.NOT_FOUND, f"no {precision} organ segmenter for {modality.upper()} is served",
                           "precision")

    async def segment(self, request: SegmentRequest) -> SegmentResult:
        """Organ masks, areas (mm² when the image has a pixel spacing) and boxes in original pixels."""
        arrived = time.perf_counter()
        self._admit()
        request_id = request.request_id or uuid.uuid4().hex
        if request.precision and request.precision not in SEGMENTER_PRECISIONS:
            raise invalid(f"precision {request.precision!r} is not one of {', '.join(SEGMENTER_PRECISIONS)}",
                          "precision")
        if request.mask_format not in MASK_FORMATS:
            raise invalid(f"mask_format {request.mask_format!r} is not one of {', '.join(MASK_FORMATS)}",
                          "mask_format")
        formats = self._output_formats(request.image, request.output_formats, ("json", "dicom-seg"), "Segment")
        if request.model and request.model not in self.segmenter_models:
            raise ServiceError(ErrorCode.NOT_FOUND, f"model {request.model!r} is not served", "model")
        if self.segmentation is None or not self.segmentation.ready():
            raise ServiceError(ErrorCode.UNAVAILABLE, "the organ segmenter is not ready", retry_after=5.0)
        self.segment_gate.admit()
        try:
            async with self.segment_gate.running(request.deadline):
                return await self._segment(request, request_id, formats, arrived)
        finally:
            self.segment_gate.release()

    async def _segment(self, request: SegmentRequest, request_id: str, formats: tuple[str, ...], arrived: float,
                       ) -> SegmentResult:
        decoded, preprocess = await self._decode(request.image, request.deadline)
        if wants_dicom(formats):
            check_source(decoded.dicom)
        if request.model:
            model = self.segmenter_models[request.model]
            if decoded.modality not in model.modalities:
                raise invalid(f"model {model.name} segments {', '.join(model.modalities).upper()}, the image is "
                              f"{decoded.modality.upper()}", "image")
        else:
            model = self._segmenter_for(decoded.modality, request.precision or "fp32")
        started = time.perf_counter()
        labels = await self.segmentation.segment(model.name, segmenter_input(decoded), decoded.modality,
                                                 request.deadline)
        engine_seconds = time.perf_counter() - started
        self.metrics.engine.labels(model=model.name).observe(engine_seconds)
        organs = await asyncio.to_thread(organ_masks, labels, decoded.pixel_spacing_mm, request.mask_format)
        outputs: list[DicomOutput] = []
        if "dicom-seg" in formats:  # built and encoded off the event loop, like Ask's outputs
            outputs.append(await asyncio.to_thread(seg_output, decoded, labels, model, request.image.frame))
            await self._store(request.image, outputs, request.deadline)
        timings = Timings(preprocess_ms=_ms(preprocess), engine_ms=_ms(engine_seconds),
                          total_ms=_ms(time.perf_counter() - arrived))
        return SegmentResult(request_id=request_id, model=model.name, fingerprint=model.fingerprint,
                             modality=decoded.modality, width=decoded.width, height=decoded.height,
                             pixel_spacing_mm=decoded.pixel_spacing_mm, organs=organs, labels=labels, timings=timings,
                             dicom_outputs=outputs)
