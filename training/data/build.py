"""The build: detection cases → linked findings → questions → Easy/Medium/Hard records on disk."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.imaging.windowing import PNG_HU_OFFSET
from training.data.anatomy import ORGAN_BY_LABEL, ORGAN_BY_NAME, organs_for
from training.data.boxes import normalize_box
from training.data.cases import DetectionCase
from training.data.context import CaseContext, LinkedFinding
from training.data.drawing import display_image, draw_boxes
from training.data.errors import DataError, ErrorPolicy
from training.data.linking import DEFAULT_MIN_OVERLAP, body_midline_x, describe_position, link_lesion_to_organ
from training.data.questions import Question, generate_questions
from training.data.rationale import STAGES, RationaleWriter, TemplateRationaleWriter, easy_prompt, format_target
from training.data.records import FindingRecord, VQARecord
from training.data.segmentation import OrganSegmenter

SPLITS = (("train", 0.8), ("val", 0.9), ("test", 1.0))  # cumulative shares, split by image
MIN_VISIBLE_FRACTION = 0.002  # an organ covering less of the image than this is not called "visible"


@dataclass
class BuildOptions:
    """How a build links, writes and splits."""

    out_dir: Path
    seed: int = 0
    organ_source: str = "given"  # given | segmenter | none
    organ_names: dict[int, str] = field(default_factory=lambda: {o.label: o.name for o in ORGAN_BY_LABEL.values()})
    min_overlap: float = DEFAULT_MIN_OVERLAP
    on_error: str = "raise"
    workers: int = 2
    progress: bool = True


def split_of(case_id: str, seed: int) -> str:
    """Deterministic split of an image by a hash of its id (all questions on one image share a split)."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    return next(name for name, upper in SPLITS if share < upper)


def _relative_or_copy(path: Path | None, out_dir: Path, folder: str, case_id: str, pixels: np.ndarray | None,
                      ) -> str | None:
    """Path relative to the dataset folder; images from elsewhere are written into it first."""
    if path is not None and path.resolve().is_relative_to(out_dir.resolve()) and path.suffix == ".png":
        return str(path.resolve().relative_to(out_dir.resolve()))
    if pixels is None:
        return None
    target = out_dir / folder / f"{case_id}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target, compress_level=1)
    return str(target.relative_to(out_dir))


def _stored_pixels(pixels: np.ndarray, modality: str) -> np.ndarray:
    """Canonical on-disk form: CT as 16-bit PNG of HU + 1024, radiographs as 8-bit."""
    if modality == "ct":
        return np.clip(np.rint(pixels + PNG_HU_OFFSET), 0, 65535).astype(np.uint16)
    return pixels.astype(np.uint8)


def link_case(case: DetectionCase, image: np.ndarray, organ_mask: np.ndarray | None, options: BuildOptions,
              ) -> CaseContext:
    """Link every lesion of a case to its host organ and describe where it lies."""
    names = options.organ_names
    modality_organs = {o.name for o in organs_for(case.modality)}
    visible: list[str] = []
    midline = body_midline_x(image, case.modality)
    if organ_mask is not None:
        labels, counts = np.unique(organ_mask, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist()):
            if label == 0:
                continue
            if label not in names:
                raise DataError(f"organ mask has label {label}, which organs.json does not name",
                                file=str(case.organ_mask_path or case.image_path))
            if names[label] in modality_organs and count >= MIN_VISIBLE_FRACTION * organ_mask.size:
                visible.append(names[label])
        visible.sort(key=lambda n: ORGAN_BY_NAME[n].label)
        mediastinum = [lbl for lbl, n in names.items() if n == "mediastinum"]
        if case.modality == "cxr" and mediastinum and (organ_mask == mediastinum[0]).any():
            midline = float(np.nonzero(organ_mask == mediastinum[0])[1].mean())

    findings = []
    for lesion in case.lesions:
        host_region = None
        if organ_mask is not None:
            link = link_lesion_to_organ(lesion.box_px, organ_mask, names, lesion_mask=lesion.mask,
                                        min_overlap=options.min_overlap)
            organ, overlap = link.organ, link.overlap
            if organ is not None:
                label = next(lbl for lbl, n in names.items() if n == organ)
                host_region = organ_mask == label
        else:
            organ, overlap = lesion.organ_hint, None
        x1, y1, x2, y2 = lesion.box_px
        size_mm = lesion.size_mm or max((x2 - x1) * case.pixel_spacing_mm[1], (y2 - y1) * case.pixel_spacing_mm[0])
        findings.append(LinkedFinding(
            label=lesion.label, organ=organ, overlap=overlap, box_px=lesion.box_px,
            box=normalize_box(lesion.box_px, case.width, case.height), size_mm=float(size_mm),
            position=describe_position(lesion.box_px, case.modality, case.width, case.height, host_region, midline),
        ))
    return CaseContext(case.case_id, case.modality, case.view or ("axial" if case.modality == "ct" else "PA"),
                       case.width, case.height, findings, visible)


def _finding_record(f: LinkedFinding) -> FindingRecord:
    return FindingRecord(label=f.label, organ=f.organ, box_px=f.box_px, box=f.box,
                         overlap=None if f.overlap is None else round(f.overlap, 4), size_mm=round(f.size_mm, 2))


def case_records(case: DetectionCase, context: CaseContext, questions: list[Question], image_rel: str,
                 mask_rel: str | None, display: np.ndarray, writer: RationaleWriter, options: BuildOptions,
                 rng: np.random.Generator) -> list[dict]:
    """Three records (Easy, Medium, Hard) per question, writing the Easy images they need."""
    records = []
    easy_images: dict[tuple, str] = {}
    all_findings = [_finding_record(f) for f in context.findings]
    for q_index, question in enumerate(questions):
        key = tuple(f.box_px for f in question.findings)
        if key and key not in easy_images:
            rel = f"images/easy/{case.case_id}_e{len(easy_images)}.png"
            (options.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            # Fast zlib level: these are noisy images where higher levels save little and cost ~10x.
            draw_boxes(display, key).save(options.out_dir / rel, compress_level=1)
            easy_images[key] = rel
        for stage in STAGES:
            rationale = writer.write(question, context, stage, rng)
            record = VQARecord(
                id=f"{case.case_id}-q{q_index}-{stage}", case_id=case.case_id, image=image_rel,
                image_easy=easy_images.get(key, image_rel), organ_mask=mask_rel, modality=case.modality,
                view=context.view, width=case.width, height=case.height, pixel_spacing_mm=case.pixel_spacing_mm,
                stage=stage, question_type=question.qtype,
                question=easy_prompt(question) if stage == "easy" else question.text,
                rationale=rationale, answer=question.answer, target=format_target(stage, rationale, question.answer),
                findings=[_finding_record(f) for f in question.findings], case_findings=all_findings,
            )
            records.append(record.model_dump(mode="json"))
    return records


@dataclass
class CaseResult:
    """What one worker returns for one case."""

    case_id: str
    records: list[dict] = field(default_factory=list)
    context: CaseContext | None = None
    error: str | None = None
    # With predicted masks on a dataset that also has true masks: (lesions linked alike, lesions compared).
    link_agreement: tuple[int, int] = (0, 0)


_WORKER: dict = {}


def _init_worker(options: BuildOptions, segmenter_factory: Callable[[], OrganSegmenter] | None,
                 writer: RationaleWriter) -> None:
    _WORKER["options"] = options
    _WORKER["segmenter"] = segmenter_factory() if segmenter_factory else None
    _WORKER["writer"] = writer


def process_case(case: DetectionCase) -> CaseResult:
    """Load, link and write one case inside a worker; a DataError becomes the result's ``error``."""
    options: BuildOptions = _WORKER["options"]
    try:
        image = case.load_image()
        if options.organ_source == "given":
            organ_mask = case.load_organ_mask()
        elif options.organ_source == "segmenter":
            organ_mask = _WORKER["segmenter"].segment(image, case.modality, case.pixel_spacing_mm)
        else:
            organ_mask = None
        context = link_case(case, image, organ_mask, options)
        agreement = (0, 0)
        if options.organ_source == "segmenter" and case.organ_mask_path is not None:
            truth = link_case(case, image, case.load_organ_mask(), options)
            agreement = (sum(p.organ == t.organ for p, t in zip(context.findings, truth.findings)),
                         len(truth.findings))
        rng = np.random.default_rng([options.seed, int.from_bytes(hashlib.sha256(case.case_id.encode()).digest()[:4],
                                                                  "big")])
        questions = generate_questions(context, rng)
        image_rel = _relative_or_copy(case.image_path, options.out_dir, "images", case.case_id,
                                      _stored_pixels(image, case.modality))
        given = options.organ_source == "given"
        # Predicted masks get their own folder so they never overwrite a dataset's ground-truth masks.
        mask_rel = _relative_or_copy(case.organ_mask_path if given else None, options.out_dir,
                                     "masks" if given else "masks_predicted", case.case_id, organ_mask)
        records = case_records(case, context, questions, image_rel, mask_rel, display_image(image, case.modality),
                               _WORKER["writer"], options, rng)
        return CaseResult(case.case_id, records, context, link_agreement=agreement)
    except (DataError, ValueError) as exc:
        message = str(exc) if isinstance(exc, DataError) else f"{case.image_path}: {exc}"
        return CaseResult(case.case_id, error=message)


def balance_presence(records: list[dict], seed: int) -> list[dict]:
    """Drop presence questions of the majority answer until yes and no are equal per split and modality.

    Whole questions are dropped (all three stage variants), chosen by a seeded hash so builds repeat.
    """
    def question_key(r: dict) -> str:
        return r["id"].rsplit("-", 1)[0]

    groups: dict[tuple, dict[str, set[str]]] = {}
    for r in records:
        if r["question_type"] == "presence":
            key = (split_of(r["case_id"], seed), r["modality"])
            groups.setdefault(key, {"yes": set(), "no": set()})[r["answer"]].add(question_key(r))
    drop: set[str] = set()
    for answers in groups.values():
        keep = min(len(answers["yes"]), len(answers["no"]))
        for ids in answers.values():
            ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
            drop.update(ranked[keep:])
    return [r for r in records if question_key(r) not in drop]


def build_dataset(cases: Sequence[DetectionCase], options: BuildOptions,
                  segmenter_factory: Callable[[], OrganSegmenter] | None = None,
                  writer: RationaleWriter | None = None, policy: ErrorPolicy | None = None) -> dict:
    """Build the VQA dataset into ``options.out_dir``; return the statistics also written to stats.json."""
    policy = policy or ErrorPolicy(options.on_error)
    if not cases:
        raise DataError("the dataset has no images (nothing to build)")
    if options.organ_source == "segmenter" and segmenter_factory is None:
        raise ValueError("organ_source 'segmenter' needs a segmenter")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    writer = writer or TemplateRationaleWriter()
    init = (options, segmenter_factory, writer)
    results: list[CaseResult] = []
    bar = tqdm(total=len(cases), desc="building VQA records", unit="img", disable=not options.progress)
    if options.workers > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(options.workers, initializer=_init_worker, initargs=init) as pool:
            for result in pool.imap(process_case, cases, chunksize=8):
                results.append(result)
                bar.update()
    else:
        _init_worker(*init)
        for case in cases:
            results.append(process_case(case))
            bar.update()
    bar.close()

    records: list[dict] = []
    contexts: list[CaseContext] = []
    for result in results:
        if result.error is not None:
            policy.handle(DataError(result.error))
            continue
        records.extend(result.records)
        contexts.append(result.context)
    if not records:
        raise DataError(f"no usable records: all {len(cases)} images were rejected ({policy.skipped[:3]})")
    records = balance_presence(records, options.seed)
    by_split: dict[str, list[dict]] = {name: [] for name, _ in SPLITS}
    for record in records:
        by_split[split_of(record["case_id"], options.seed)].append(record)
    for name, rows in by_split.items():
        with (options.out_dir / f"{name}.jsonl").open("w") as handle:
            for row in sorted(rows, key=lambda r: r["id"]):
                handle.write(json.dumps(row) + "\n")
    stats = dataset_stats(by_split, contexts, policy, options)
    same, compared = (sum(r.link_agreement[i] for r in results) for i in (0, 1))
    if compared:
        # How often linking on predicted masks names the same host organ as linking on the true masks.
        stats["segmenter_link_agreement"] = {"agree": same, "lesions": compared, "rate": round(same / compared, 4)}
    (options.out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def dataset_stats(by_split: dict[str, list[dict]], contexts: list[CaseContext], policy: ErrorPolicy,
                  options: BuildOptions) -> dict:
    """Counts people check before training: images, records, answers, lesion types and their host organs."""
    records = [r for rows in by_split.values() for r in rows]
    findings = [f for c in contexts for f in c.findings]
    presence = Counter(r["answer"] for r in records if r["question_type"] == "presence")
    return {
        "images": len(contexts),
        "images_by_modality": dict(Counter(c.modality for c in contexts)),
        "images_without_lesions": sum(1 for c in contexts if not c.findings),
        "images_by_split": {s: len({r["case_id"] for r in rows}) for s, rows in by_split.items()},
        "records": len(records),
        "records_by_split": {s: len(rows) for s, rows in by_split.items()},
        "records_by_stage": dict(Counter(r["stage"] for r in records)),
        "records_by_question_type": dict(Counter(r["question_type"] for r in records)),
        "presence_answers": dict(presence),
        "lesions": len(findings),
        "lesions_by_label": dict(Counter(f.label for f in findings)),
        "lesions_by_host_organ": dict(Counter(f.organ or "outside organs" for f in findings)),
        "lesions_by_size": dict(Counter(f.size_category for f in findings)),
        "mean_overlap": round(float(np.mean([f.overlap for f in findings if f.overlap is not None] or [0.0])), 4),
        "organ_source": options.organ_source,
        "min_overlap": options.min_overlap,
        "seed": options.seed,
        "skipped": len(policy.skipped),
        "skipped_examples": policy.skipped[:10],
    }
