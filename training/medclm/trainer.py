"""The MedCLM trainer: vision warm-up, then a curriculum over Easy / Medium / Hard, on ``accelerate``.

One process or many (``accelerate launch -m training.medclm train ...``) run the same code: every process
builds the same global batch plan from the same seed and takes its own slice, losses are averaged across
processes before they steer the adaptive curriculum, and only the main process evaluates and writes.

All inputs are checked before the first step: config keys, data files, record schema, images on disk,
checkpoint format and data fingerprint on resume.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from training.data.boxes import grid_values
from training.medclm.checkpoint import read_meta, read_trainer_state, save_checkpoint
from training.medclm.config import MedCLMConfig
from training.medclm.data import (Dataset, ImageCache, SequencePlan, collate, load_dataset, plan_sequences,
                                  record_image_path, snap_dataset_boxes, tokenize_turns)
from training.medclm.errors import MedCLMError
from training.medclm.evaluate import evaluate, select_eval_records
from training.medclm.model import (base_llava, build_image_processor, build_model, build_processor, count_parameters,
                                   init_number_rows, load_pretrained, padded_vocab_size, patch_grid)
from training.medclm.objective import MedCLMObjective
from training.medclm.projector import calibrate_projector
from training.medclm.prompts import INSTRUCTIONS
from training.medclm.report import write_run_report
from training.medclm.schedule import STAGE_ORDER, AdaptiveScheduler, record_domain, sequential_phases
from training.medclm.tokenizer import add_number_tokens, corpus_texts, train_tokenizer
from training.medclm.warmup import DenseTargetCache, VisionWarmupHeads
from training.medclm.znorm import znorm_gradients


@dataclass
class Phase:
    """One stretch of training with its own batches; a checkpoint is written at its end."""

    name: str  # warmup | align | easy | medium | hard | mixed | adaptive
    steps: int


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    checkpoints: list[Path]
    history: list[dict]
    evaluations: list[dict]
    seconds: float
    parameters: int
    examples: list[dict] = field(default_factory=list)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)


def peak_memory_mb() -> dict[str, float]:
    """This process's peak memory so far: resident set (``rss``; Linux reports kB) and, on a GPU, the
    largest amount torch has allocated (``gpu``). Per process: a data-parallel run reports its main rank."""
    peaks = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peaks["gpu"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def _stage_records(dataset: Dataset, stage: str) -> list:
    if stage == "mixed":
        return dataset.train
    if stage == "align":  # the alignment stage trains on the answer-only targets
        stage = "hard"
    return [r for r in dataset.train if r.stage == stage]


def plan_phases(config: MedCLMConfig, dataset: Dataset, world: int) -> list[Phase]:
    """Warm-up (if any) then the curriculum's phases, each with its number of optimiser steps."""
    phases = [Phase("warmup", config.warmup_steps)] if config.warmup_steps > 0 else []
    if config.align_steps > 0:
        if not _stage_records(dataset, "hard"):
            raise MedCLMError("the alignment stage (align_steps > 0) needs hard records in the training split")
        phases.append(Phase("align", config.align_steps))
    global_batch = config.batch_size * world
    if config.curriculum == "adaptive":
        missing = [s for s in ("easy", "medium", "hard") if not _stage_records(dataset, s)]
        if missing:
            raise MedCLMError(f"the adaptive curriculum needs every stage; the training split has no {missing}")
        curriculum = [Phase("adaptive", config.adaptive_epochs * config.adaptive_epoch_steps)]
    else:
        rng = np.random.default_rng(0)
        curriculum = []
        for stage, epochs in sequential_phases(config):
            plans = plan_sequences(_stage_records(dataset, stage), config.questions_per_image, rng)
            if not plans:
                raise MedCLMError(f"the training split has no {stage} records")
            curriculum.append(Phase(stage, max(1, math.ceil(len(plans) * epochs / global_batch))))
    if config.curriculum_steps > 0:
        curriculum = scale_phases(curriculum, config.curriculum_steps)
    return phases + curriculum


def scale_phases(phases: list[Phase], total: int) -> list[Phase]:
    """The phases resized to ``total`` steps in all, in proportion (each at least 1; the last takes the rest)."""
    if total < len(phases):
        raise MedCLMError(f"curriculum_steps={total} is fewer than the curriculum's {len(phases)} phases")
    planned = sum(p.steps for p in phases)
    steps = [max(1, round(p.steps * total / planned)) for p in phases[:-1]]
    steps.append(total - sum(steps))
    while steps[-1] < 1:  # rounding up the small phases left the last none: take from the largest
        steps[steps.index(max(steps[:-1]))] -= 1
        steps[-1] += 1
    return [Phase(p.name, n) for p, n in zip(phases, steps)]


def adaptive_epoch_steps(config: MedCLMConfig, phase_steps: int) -> int:
    """Steps per pseudo-epoch of the adaptive scheduler: its configured epochs spread over the phase."""
    return max(1, phase_steps // config.adaptive_epochs)


def _epoch_batches(records: list, config: MedCLMConfig, rng: np.random.Generator, size: int,
                   ) -> Iterator[list[SequencePlan]]:
    """Endless full batches of sequence plans, reshuffled every pass.

    Plans are sorted by text length inside windows of 8 batches before batching, so one long Easy
    rationale does not pad seven short ones (measured ~2x less padding), while batch order stays random.
    """
    if not records:
        raise MedCLMError("no training records for this phase")  # an endless loop otherwise
    while True:
        plans = plan_sequences(records, config.questions_per_image, rng)
        if len(plans) < size:
            plans = (plans * size)[:size]  # tiny datasets: repeat rather than starve
        window, batches = size * 8, []
        for start in range(0, len(plans), window):
            chunk = sorted(plans[start:start + window],
                           key=lambda p: sum(len(r.question) + len(r.target) for r in p.records))
            batches += [chunk[i:i + size] for i in range(0, len(chunk) - size + 1, size)]
        order = rng.permutation(len(batches))
        for index in order:
            yield batches[index]


def _warmup_batches(dataset: Dataset, rng: np.random.Generator, size: int) -> Iterator[list]:
    """Endless batches of records with distinct model-view images (clean and Easy copies)."""
    by_image = {}
    for record in dataset.train:
        by_image.setdefault(record_image_path(record), record)
    records = [by_image[k] for k in sorted(by_image)]
    while True:
        order = rng.permutation(len(records))
        for start in range(0, max(1, len(order) - size + 1), size):
            yield [records[i] for i in order[start:start + size]]


class _DomainSampler:
    """Adaptive curriculum batches: one stage per batch (from the scheduler), one domain per batch."""

    def __init__(self, dataset: Dataset, config: MedCLMConfig, rng: np.random.Generator, size: int):
        self.config, self.rng, self.size = config, rng, size
        self.pools: dict[str, dict[str, list]] = {}
        for record in dataset.train:
            self.pools.setdefault(record.stage, {}).setdefault(record_domain(record), []).append(record)
        self.queues: dict[tuple[str, str], list[SequencePlan]] = {}

    def batch(self, stage: str) -> list[SequencePlan]:
        """A batch of ``stage`` sequences from one domain, chosen in proportion to the domain's size."""
        domains = sorted(self.pools[stage])
        sizes = np.array([len(self.pools[stage][d]) for d in domains], dtype=float)
        domain = domains[int(self.rng.choice(len(domains), p=sizes / sizes.sum()))]
        queue = self.queues.setdefault((stage, domain), [])
        while len(queue) < self.size:
            fresh = plan_sequences(self.pools[stage][domain], self.config.questions_per_image, self.rng)
            queue.extend(fresh)
            if len(fresh) == 0:
                break
        batch, self.queues[(stage, domain)] = queue[:self.size], queue[self.size:]
        return batch


def lr_factor(config: MedCLMConfig, warmup_steps: int, total_steps: int):
    """Multiplier of the peak LR at each global step: linear warm-up over ``lr_warmup_steps`` (at most half
    of a stage), then cosine decay to ``min_lr``.

    With ``lr_schedule="per-stage"`` the vision warm-up (its first ``warmup_steps`` steps) and the language
    stages after it each get their own warm-up and cosine, like LLaVA's separately scheduled stages. With
    ``"single"`` one cosine spans the whole run.
    """
    floor = config.min_lr / config.lr
    split = warmup_steps if config.lr_schedule == "per-stage" and 0 < warmup_steps < total_steps else 0

    def cosine(step: int, length: int) -> float:
        ramp = min(config.lr_warmup_steps, max(1, length // 2))
        if step < ramp:
            return (step + 1) / ramp
        progress = min(1.0, (step - ramp) / max(1, length - ramp))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def factor(step: int) -> float:
        if step < split:
            return cosine(step, split)
        return cosine(step - split, total_steps - split)

    return factor


def param_groups(objective: MedCLMObjective, config: MedCLMConfig) -> list[dict]:
    """AdamW groups: the vision tower at ``vision_lr``, everything else at ``lr``; each split into decayed
    matrices and undecayed norms, biases and the CLIP class/position vectors (as in nanoGPT)."""
    tower = {id(p) for p in base_llava(objective.model).model.vision_tower.parameters()}
    groups = []
    for in_tower, lr in ((False, config.lr), (True, config.vision_lr)):
        decay, no_decay = [], []
        for name, param in objective.named_parameters():
            if not param.requires_grad or (id(param) in tower) != in_tower:
                continue
            (decay if param.ndim >= 2 and "position_embedding" not in name else no_decay).append(param)
        groups += [{"params": decay, "weight_decay": config.weight_decay, "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [group for group in groups if group["params"]]


def _calibrate(objective: MedCLMObjective, dataset: Dataset, images: ImageCache, config: MedCLMConfig,
               accelerator) -> None:
    """Standardise the projector on the warmed-up tower's features (see ``training.medclm.projector``);
    every process computes the same thing from the same images, so replicas stay identical."""
    by_image = {}
    for record in dataset.train:
        by_image.setdefault(record_image_path(record), record)
    sample = [by_image[k] for k in sorted(by_image)[:64]]
    with torch.no_grad():
        pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in sample]).to(accelerator.device)
        features = objective.patch_features(pixels)
    llava = base_llava(objective.model)
    token_norm = float(llava.get_input_embeddings().weight.norm(dim=-1).mean())
    figures = calibrate_projector(llava.model.multi_modal_projector, features.cpu(), token_norm,
                                  torch.Generator().manual_seed(config.seed))
    accelerator.print(f"projector calibrated on {len(sample)} images: {figures}")


def prepare_run(config: MedCLMConfig, data_dir: Path, resume: Path | None):
    """Everything checked and built before training: data, tokenizer, model, heads, resume state."""
    need_dense = config.warmup_steps > 0 or config.dense_weight > 0
    dataset = load_dataset(data_dir, need_masks=need_dense)
    number_tokens = grid_values(config.image_size) if config.box_tokens == "pixels" else []
    if number_tokens:
        dataset = snap_dataset_boxes(dataset, config.image_size)
    state = None
    if resume is not None:
        meta = read_meta(resume)
        if meta["data_fingerprint"] != dataset.fingerprint:
            raise MedCLMError(f"checkpoint {resume} was trained on different data (fingerprint "
                              f"{meta['data_fingerprint'][:12]}, {data_dir} has {dataset.fingerprint[:12]})")
        state = read_trainer_state(resume)
    torch.manual_seed(config.seed)
    if resume is not None and config.lora_rank > 0:
        model, tokenizer, image_processor = load_pretrained(config.init_from, config)
        model.load_state_dict(state["lora_state"], strict=False)
    elif resume is not None:
        plain = MedCLMConfig.from_dict({**config.to_dict(), "lora_rank": 0})
        model, tokenizer, image_processor = load_pretrained(resume, plain)
        if number_tokens and add_number_tokens(tokenizer, number_tokens):
            # A warm-up checkpoint's language model has not trained yet (the warm-up reads the tower only), so
            # its tokenizer may still gain the box tokens; later in the curriculum that would change the task.
            if meta["stage"] != "warmup":
                raise MedCLMError(f"{resume} was trained with box_tokens 'digits' (stage {meta['stage']}); "
                                  "box_tokens 'pixels' can resume only from a warm-up checkpoint")
            model.resize_token_embeddings(padded_vocab_size(tokenizer), mean_resizing=False)
            init_number_rows(model, tokenizer, number_tokens)
    elif config.init_from:
        model, tokenizer, image_processor = load_pretrained(config.init_from, config)
    else:
        tokenizer = train_tokenizer(corpus_texts(dataset.train, INSTRUCTIONS), config.vocab_size, number_tokens)
        image_processor = build_image_processor(config.image_size)
        model = build_model(config, tokenizer)
        if number_tokens:
            init_number_rows(model, tokenizer, number_tokens)
    llava = base_llava(model)
    heads = (VisionWarmupHeads(llava.config.vision_config.hidden_size, digits=config.dense_digit_weight > 0,
                               box_encoding=config.dense_box_encoding) if need_dense else None)
    if heads is not None and state is not None and state.get("heads") is not None:
        heads.load_state_dict(state["heads"], strict=False)  # heads added since then start fresh
    return dataset, tokenizer, image_processor, model, heads, state


def train(config: MedCLMConfig, data_dir: Path, out_dir: Path, resume: Path | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train (or resume) and write one checkpoint per phase under ``out_dir``; returns the run's figures.

    ``stop_after`` = N ends the run after its first N phases (an ablation's shared warm-up is phase 1); the
    LR schedule still spans every phase, so runs resumed from that checkpoint continue it unchanged.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    out_dir = Path(out_dir)
    dataset, tokenizer, image_processor, model, heads, state = prepare_run(config, Path(data_dir), resume)

    accelerator = Accelerator(
        mixed_precision=config.resolved_precision(), cpu=not torch.cuda.is_available(),
        # The warm-up leaves the text model unused and LLaVA never reads the tower's last layer.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    objective = MedCLMObjective(model, heads, config)
    optimizer = torch.optim.AdamW(param_groups(objective, config), lr=config.lr, betas=config.betas)
    phases = plan_phases(config, dataset, world)
    total_steps = sum(p.steps for p in phases)
    warmup_steps = sum(p.steps for p in phases if p.name == "warmup")
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, warmup_steps, total_steps))
    objective, optimizer = accelerator.prepare(objective, optimizer)

    first_phase, global_step, history, evaluations = 0, 0, [], []
    adaptive = AdaptiveScheduler.from_config(config)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        first_phase, global_step = state["next_phase"], state["step"]
        history, evaluations = state["history"], state["evaluations"]
        adaptive.load_state_dict(state["adaptive"])

    images = ImageCache(dataset.root, image_processor)
    grid = patch_grid(model)
    dense_targets = DenseTargetCache(dataset.root, grid)
    image_tokens = grid * grid
    eval_records = select_eval_records(dataset.val, config.eval_records)
    processor = build_processor(tokenizer, image_processor, base_llava(model).config.vision_config.patch_size)
    parameters = count_parameters(base_llava(model))
    if accelerator.is_main_process:
        accelerator.print(f"MedCLM {config.preset}: {parameters / 1e6:.2f}M parameters, {len(dataset.train)} train "
                          f"records, phases {[(p.name, p.steps) for p in phases]}, {world} process(es), "
                          f"mixed precision {accelerator.mixed_precision}")

    def run_eval(tag: str) -> dict:
        if not eval_records or not accelerator.is_main_process:
            return {}
        unwrapped = accelerator.unwrap_model(objective).model
        metrics, examples = evaluate(unwrapped, processor, images, eval_records, config.max_new_tokens)
        entry = {"step": global_step, "phase": tag, **metrics}
        evaluations.append(entry)
        run_eval.examples = examples
        return entry

    run_eval.examples = []
    checkpoints: list[Path] = []
    for index in range(first_phase, len(phases) if stop_after is None else min(stop_after, len(phases))):
        phase = phases[index]
        rng = np.random.default_rng([config.seed, index])
        if (config.calibrate_projector and not config.init_from and phase.name != "warmup" and index > 0
                and phases[index - 1].name == "warmup"):
            _calibrate(accelerator.unwrap_model(objective), dataset, images, config, accelerator)
        llava = base_llava(accelerator.unwrap_model(objective).model)
        if config.freeze_projector and phase.name != "warmup":
            llava.model.multi_modal_projector.requires_grad_(False)
        # Frozen once it has learnt to see: after the warm-up, or from the start for a pretrained tower;
        # a random tower without warm-up keeps training (frozen, it would stay blind).
        tower_frozen = (config.freeze_vision and phase.name != "warmup"
                        and (config.warmup_steps > 0 or bool(config.init_from)))
        if tower_frozen:
            llava.model.vision_tower.requires_grad_(False)
        # The dense loss after warm-up only keeps a training tower seeing; a frozen one needs no heads.
        dense_weight = 0.0 if tower_frozen else config.dense_weight
        if phase.name == "warmup":
            batches = _warmup_batches(dataset, rng, config.batch_size * config.questions_per_image * world)
        elif phase.name == "adaptive":
            sampler = _DomainSampler(dataset, config, rng, config.batch_size * world)
        else:
            batches = _epoch_batches(_stage_records(dataset, phase.name), config, rng, config.batch_size * world)
        replays: dict[str, Iterator[list[SequencePlan]]] = {}  # sequential: other stages' batches
        earlier = [s for s in (STAGE_ORDER[:STAGE_ORDER.index(phase.name)] if phase.name in STAGE_ORDER else ())
                   if _stage_records(dataset, s)]  # replay only stages that have records
        preview = (config.curriculum == "sequential" and config.hard_preview > 0 and phase.name in ("easy", "medium")
                   and bool(_stage_records(dataset, "hard")))
        bar = tqdm(total=phase.steps, desc=f"{index + 1}/{len(phases)} {phase.name}", unit="step",
                   disable=not (progress and accelerator.is_main_process))
        phase_started, samples = time.perf_counter(), 0
        for step_in_phase in range(phase.steps):
            stage = phase.name
            if phase.name == "adaptive":
                stage = adaptive.sample(rng)
                plans = sampler.batch(stage)
            elif phase.name != "warmup":
                if preview and rng.random() < config.hard_preview:  # drawn only with a preview: same stream without
                    stage = "hard"
                elif config.curriculum == "sequential" and earlier and rng.random() < config.replay:
                    stage = earlier[int(rng.integers(len(earlier)))]
                if stage == phase.name:
                    plans = next(batches)
                else:
                    if stage not in replays:
                        replays[stage] = _epoch_batches(_stage_records(dataset, stage), config,
                                                        np.random.default_rng([config.seed, index, len(replays)]),
                                                        config.batch_size * world)
                    plans = next(replays[stage])
            with accelerator.autocast():
                if phase.name == "warmup":
                    records = next(batches)[rank::world]
                    pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in records])
                    out = objective(pixels.to(accelerator.device),
                                    dense_targets={k: v.to(accelerator.device)
                                                   for k, v in dense_targets.batch(records).items()},
                                    dense_weight=1.0)
                    samples += len(records)
                else:
                    mine = plans[rank::world]
                    sequences = [tokenize_turns(tokenizer, p.records, image_tokens, config.answer_weight,
                                                config.reasoning_weight) for p in mine]
                    batch = {k: v.to(accelerator.device) for k, v in collate(sequences, tokenizer.pad_token_id).items()}
                    pixels = torch.stack([images.get(p.image, p.records[0].modality) for p in mine])
                    dense = None
                    if heads is not None and dense_weight > 0:
                        dense = {k: v.to(accelerator.device)
                                 for k, v in dense_targets.batch([p.records[0] for p in mine]).items()}
                    out = objective(pixels.to(accelerator.device), batch["input_ids"], batch["attention_mask"],
                                    batch["weights"], dense_targets=dense, dense_weight=dense_weight)
                    samples += sum(len(p.records) for p in mine)
            accelerator.backward(out["loss"])
            if config.znorm:
                znorm_gradients(objective.parameters())
            elif config.grad_clip > 0:
                accelerator.clip_grad_norm_(objective.parameters(), config.grad_clip)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1

            loss = accelerator.reduce(out["loss"].detach(), "mean").item()
            lm = accelerator.reduce(out["lm"], "mean").item() if "lm" in out else None
            if phase.name == "adaptive" and lm is not None:
                adaptive.observe(stage, lm)
                if (step_in_phase + 1) % adaptive_epoch_steps(config, phase.steps) == 0:
                    adaptive.end_epoch()
            if step_in_phase % config.log_every == 0 or step_in_phase == phase.steps - 1:
                entry = {"step": global_step, "phase": phase.name, "stage": stage, "loss": round(loss, 5),
                         "lr": lr_schedule.get_last_lr()[0]}
                if lm is not None:
                    entry["lm"] = round(lm, 5)
                if "dense_parts" in out:
                    entry.update({k: round(v, 4) for k, v in out["dense_parts"].items()})
                if phase.name == "adaptive":
                    entry.update(p_medium=round(adaptive.p_medium(), 4), p_hard=round(adaptive.p_hard(), 4),
                                 gap=round(adaptive.gap(), 4))
                history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", stage=stage)
            if config.eval_every > 0 and global_step % config.eval_every == 0 and phase.name != "warmup":
                entry = run_eval(phase.name)
                if entry:
                    bar.write(f"eval step {global_step}: " + ", ".join(
                        f"{k}={v}" for k, v in entry.items() if k in ("yes_no", "organ", "acc_at_0.5", "overall")))
        bar.close()
        seconds = time.perf_counter() - phase_started
        final_eval = run_eval(phase.name) if phase.name != "warmup" else {}
        if accelerator.is_main_process:
            recent = [h for h in history if h["phase"] == phase.name][-5:]
            figures = {"phase_seconds": round(seconds, 1), "samples_per_second": round(samples * world / seconds, 2),
                       "peak_memory_mb": peak_memory_mb(), "parameters": parameters, "recent_losses": recent,
                       # "auto" resolves per machine (bf16 only where the CPU has it natively): record what ran
                       "mixed_precision": accelerator.mixed_precision,
                       "evaluation": final_eval, "examples": run_eval.examples[:6] if final_eval else []}
            unwrapped = accelerator.unwrap_model(objective)
            trainer_state = {
                "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                "heads": unwrapped.heads.state_dict() if unwrapped.heads is not None else None,
                "next_phase": index + 1, "step": global_step, "history": history, "evaluations": evaluations,
                "adaptive": adaptive.state_dict(),
                "lora_state": ({k: v for k, v in unwrapped.model.state_dict().items()
                                if "lora_" in k or "modules_to_save" in k} if config.lora_rank > 0 else None),
            }
            path = save_checkpoint(out_dir / f"{index + 1:02d}-{phase.name}", unwrapped.model, tokenizer,
                                   image_processor, config, stage=phase.name, step=global_step,
                                   fingerprint=dataset.fingerprint, figures=figures, trainer_state=trainer_state)
            checkpoints.append(path)
            write_run_report(out_dir, history, evaluations)
        accelerator.wait_for_everyone()
    return TrainResult(out_dir, checkpoints, history, evaluations, time.perf_counter() - started, parameters,
                       run_eval.examples, peak_memory_mb())
