"""Training and fine-tuning jobs: from cohorts to a new model (safetensors + card).

A :class:`TrainingJob` says what to train (method, config, or a base model to fine-tune), on
what (cohorts, contrasts, held-out validation subjects, augmentation) and for how long.
:func:`run_job` loads the cohorts, draws pairs (:mod:`dmmreg.training.pairs`), trains with the
shared :class:`~dmmreg.training.trainer.Trainer` and writes the model with a card recording the data,
steps, time and the measured validation numbers (before and after, on the held-out pairs).

The job is saved as ``job.json`` in its run folder beside the checkpoints, so
:func:`resume_job` can continue an interrupted or cancelled run exactly.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from . import augmentation
from .cohorts import Cohort, read_cohort
from ..errors import InputError
from ..model_io import check_new_model_path, load_model, find_model, save_model, user_models_folder
from .trainer import Trainer
from .pairs import PairSampler, PairSettings, load_cohort

JOB_FILE = "job.json"


@dataclass
class TrainingJob:
    """Everything a training run needs (JSON-serialisable; see :func:`run_job`).

    * ``method`` / ``config``: the method and its :class:`ModelConfig` settings (``dim``,
      ``spacing_mm``, network sizes, learning rates...); ignored settings are an error.
    * ``base_model``: fine-tune this model (a path or a model name) instead of a new one; its
      config is kept and only ``finetune_stages`` of its method run unless ``steps`` names stages.
    * ``cohorts``: cohort folders or CSV files; ``contrasts``: the contrasts to pair (None: all);
      ``contrast_pairs``: allowed ``[fixed, moving]`` pairs; ``synthetic``: probability of a
      label-drawn contrast; ``across_subjects``: pair different subjects.
    * ``validation_subjects``: names held out for validation (default: the last subject of the
      last cohort when there are several subjects, else held-out pairs of the one subject);
      ``validation_pairs``: how many fixed known-warp pairs to validate on; ``align_contrasts``:
      register each training subject's contrasts to its first one before drawing pairs;
      ``registration_cases``: also validate by the whole registration of that many full-resolution
      known-warp cases of the held-out subjects (with none, of the training subjects: warps drawn
      at full resolution, not among the training pairs; axial slices for 2D models;
      :mod:`dmmreg.training.validation`), whose endpoint error then chooses the best weights
      (0: off).
    * ``steps``: updates per stage (``{stage: n}``) or one number for every stage;
      ``epoch_steps``: updates between validations and checkpoints.
    * ``spatial``: ``"residual"`` (small affine, for networks run after an affine
      pre-alignment), ``"prealigned"`` (smaller still: about what the pre-alignment leaves),
      ``"strong"`` (the FIRE paper's 20-50 % affine changes) or None (the
      method's default); ``intensity``: intensity augmentation on/off.
    * ``learning_rate``: the largest optimiser rate (None: the method's);
      ``learning_rate_decay_steps``: drop the rates to a tenth every that many updates of a stage;
      ``max_gradient_norm``: clip each optimiser's gradients to this norm (None: no clipping).
    * ``loss``: ``"paper"`` (the method's own) or ``"known-warp"`` (supervised by the pairs'
      known warps, :func:`dmmreg.training.trainer.known_warp_terms`; a curriculum's first phases).
    """

    method: str
    cohorts: list[str]
    name: str
    config: dict = field(default_factory=dict)
    base_model: str | None = None
    contrasts: list[str] | None = None
    contrast_pairs: list[list[str]] | None = None
    synthetic: float = 0.0
    across_subjects: bool = False
    validation_subjects: list[str] | None = None
    validation_pairs: int = 6
    registration_cases: int = 0
    align_contrasts: bool = False
    steps: int | dict[str, int] = 500
    epoch_steps: int = 100
    spatial: str | None = None
    intensity: bool = True
    learning_rate: float | None = None
    learning_rate_decay_steps: int | None = None
    max_gradient_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    output: str | None = None
    balance_cohorts: bool = True
    loss: str = "paper"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingJob":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"training job has unknown settings {unknown}")
        return cls(**values)


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def output_path(job: TrainingJob) -> Path:
    return Path(job.output) if job.output else user_models_folder() / f"{job.name}.safetensors"


def _make_model(job: TrainingJob, device):
    from ..methods import method_class

    if job.base_model:
        model, card = load_model(find_model(job.method, job.config.get("dim", 3), job.base_model), device=device)
        if model.name != job.method:
            raise InputError(f"base model {job.base_model!r} is a {model.name} model, not {job.method}")
        if job.config:
            raise InputError("a fine-tuned model keeps its base model's settings; drop --config")
        return model, card
    cls = method_class(job.method)
    torch.manual_seed(job.seed)
    return cls(cls.config_class.from_dict(job.config)), None


def _steps(job: TrainingJob, model) -> dict[str, int]:
    if isinstance(job.steps, dict):
        return dict(job.steps)
    stages = model.finetune_stages if job.base_model else model.stages
    return {stage: int(job.steps) for stage in stages}


def _read_cohorts(job: TrainingJob) -> tuple[Cohort, list[float]]:
    """All cohorts as one (subject names prefixed by the cohort's position when they clash), and
    per-subject sampling weights that give every cohort the same share when balanced."""
    subjects, weights, names = [], [], set()
    spelling: dict[str, str] = {}
    for path in job.cohorts:
        cohort = read_cohort(path).with_contrasts(job.contrasts)
        spelling.update(cohort.spelling)
        for subject in cohort.subjects:
            if subject.name in names:
                raise InputError(f"subject {subject.name!r} appears in two cohorts; give it one name per subject")
            names.add(subject.name)
            subjects.append(subject)
            weights.append(1.0 / len(cohort) if job.balance_cohorts else 1.0)
    return Cohort(subjects, ", ".join(job.cohorts), spelling), weights


def cancel_on_signals():
    """A ``cancel()`` for :func:`run_job` that turns true once the process gets SIGINT (Ctrl-C) or
    SIGTERM, so training stops after the current update with a checkpoint."""
    import signal

    requested = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: requested.append(True))
    return lambda: bool(requested)


def run_job(job: TrainingJob, run_folder: str | Path | None = None, progress=None, cancel=None,
            allow_bundled: bool = False, overwrite: bool = False) -> Path:
    """Train (or fine-tune) as ``job`` says; returns the new model's card path.

    ``run_folder``: checkpoints and ``job.json`` (resumable; default: none); ``cancel()``: polled
    after each update, raises :class:`~dmmreg.errors.Cancelled` after a checkpoint, and no model
    file is written; ``allow_bundled``: let ``job.output`` be in ``models/`` (the bundling script)."""
    report = progress or (lambda *args, **kwargs: None)
    target = output_path(job)
    target = target.with_suffix(".safetensors") if allow_bundled else check_new_model_path(target, overwrite)
    device = resolve_device(job.device)
    model, base_card = _make_model(job, device)
    steps = _steps(job, model)
    cohort, weights = _read_cohorts(job)
    validation_names = job.validation_subjects
    if validation_names is None:
        validation_names = [cohort.subjects[-1].name] if len(cohort) > 1 else []
    training, held_out = cohort.split(validation_names)
    cfg = model.config
    volumes = load_cohort(training, cfg.spacing_mm, cfg.margin_mm, report, align_contrasts=job.align_contrasts)
    spatial = job.spatial or ("strong" if model.predicts_affine else "residual")
    if spatial not in augmentation.SPATIAL_PRESETS:
        raise InputError(f"spatial augmentation {spatial!r}: choose {', '.join(augmentation.SPATIAL_PRESETS)}")
    settings = PairSettings(
        dim=cfg.dim,
        contrast_pairs=None if job.contrast_pairs is None else tuple(tuple(c.lower() for c in p) for p in job.contrast_pairs),
        synthetic=job.synthetic,
        across_subjects=job.across_subjects,
        spatial=augmentation.SPATIAL_PRESETS[spatial],
        intensity=augmentation.IntensityAugmentation() if job.intensity else None,
    )
    keep = {s.name for s in training.subjects}
    sampler = PairSampler(volumes, settings, [w for s, w in zip(cohort.subjects, weights) if s.name in keep])
    if held_out.subjects:
        validation_volumes = load_cohort(held_out, cfg.spacing_mm, cfg.margin_mm, report, align_contrasts=job.align_contrasts)
        validation = PairSampler(validation_volumes, settings).validation_pairs(job.validation_pairs)
        validation_source = f"held-out subjects {', '.join(validation_names)}"
    else:
        validation = sampler.validation_pairs(job.validation_pairs, seed=10_000_000)
        validation_source = "held-out pairs (other random warps) of the training subject(s)"

    cases = []
    if job.registration_cases > 0:  # without held-out subjects: full-resolution warps of the training ones
        from .validation import registration_cases, validate_registration

        cases = registration_cases((held_out if held_out.subjects else training).subjects, settings.contrast_pairs,
                                   job.registration_cases, model, progress=report)
    trainer = Trainer(model, sampler, steps, validation=validation, epoch_steps=job.epoch_steps, seed=job.seed,
                      run_folder=run_folder, device=device, learning_rate=job.learning_rate,
                      decay_steps=job.learning_rate_decay_steps, max_gradient_norm=job.max_gradient_norm,
                      registration_validation=(lambda m: validate_registration(m, cases, device)) if cases else None,
                      cancel=cancel, progress=report, loss=job.loss)
    if run_folder is not None:
        Path(run_folder).mkdir(parents=True, exist_ok=True)
        (Path(run_folder) / JOB_FILE).write_text(json.dumps(asdict(job), indent=2))
        trainer.load_checkpoint()
    history = trainer.run()
    seconds = history[-1]["seconds"] if history else 0.0
    validation_numbers = trainer.best_validation()
    card = {
        "training": {
            "data": f"cohorts {', '.join(Path(c).name for c in job.cohorts)}: {len(training)} training subjects"
                    + (f" (fine-tuning {base_card['name']})" if base_card else ""),
            "cohorts": job.cohorts,
            "subjects": [s.name for s in training.subjects],
            "contrasts": cohort.contrasts,
            "contrast_pairs": job.contrast_pairs,
            "align_contrasts": job.align_contrasts,
            "synthetic_contrast_probability": job.synthetic,
            "pairs": "across subjects" if job.across_subjects else "within subject, known random warp (FIRE protocol)",
            "spatial_augmentation": asdict(settings.spatial),
            "intensity_augmentation": asdict(settings.intensity) if settings.intensity else None,
            "steps": steps,
            "seconds": round(seconds, 1),
            "device": str(device) + ("" if device.type != "cpu" else f" ({torch.get_num_threads()} threads, {platform.machine()})"),
            "seed": job.seed,
            "base_model": None if base_card is None else {"name": base_card["name"], "validation": base_card.get("validation")},
            "learning_rate": job.learning_rate,
            "learning_rate_decay_steps": job.learning_rate_decay_steps,
            "max_gradient_norm": job.max_gradient_norm,
            "loss": job.loss,
        },
        "validation": {
            "source": validation_source,
            "pairs": len(validation),
            "registration_cases": [case.name for case in cases],
            "after_updates": validation_numbers.get("done"),  # which weights were kept (0: the starting ones)
            **{k: round(v, 4) for k, v in validation_numbers.items() if k not in ("done", "step", "seconds")},
        },
        "validation_at_start": {k: round(v, 4) for k, v in trainer.baseline_validation().items()},
    }
    return save_model(model, target, **card)


def resume_job(run_folder: str | Path, progress=None, cancel=None, allow_bundled: bool = False) -> Path:
    """Continue the job saved in ``run_folder`` from its last checkpoint."""
    job_file = Path(run_folder) / JOB_FILE
    if not job_file.exists():
        raise InputError(f"{run_folder} is not a training run folder (no {JOB_FILE}); start a run with --run-folder")
    job = TrainingJob.from_dict(json.loads(job_file.read_text()))
    return run_job(job, run_folder, progress, cancel, allow_bundled, overwrite=True)
