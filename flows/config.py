"""The whole pipeline's configuration: one section per flow, loaded from a YAML profile.

    storage:      where everything lives (datasets and the model registry)
    source:       the phantom source dataset                       -> flows/source.py
    experts:      project-trained classifier and anatomy segmenter  -> flows/experts.py
    anatomy_bank: anatomy masks segmented from unlabelled CXRs      -> flows/anatomy.py
    train:        the mask and image generators                     -> flows/train.py
    build:        the synthetic dataset build                       -> flows/build.py (tasks/build.py)
    evaluate:     downstream retraining and quality metrics         -> flows/evaluate.py (tasks/evaluate.py)

Each section *is* its flow's parameter model, so a profile, the CLI and the Prefect UI form all speak
the same names. `storage.root` is the single place the root is set: it is copied into every section,
and a section that names another root is an error. Dataset names are linked the same way (the build
reads the source and bank the earlier sections wrote).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.anatomy import AnatomyBankParameters
from tasks.evaluate import EvaluateParameters
from flows.experts import TrainExpertsParameters
from flows.profiles import apply_overrides, read_profile, validate
from flows.train import TrainFlowParameters
from tasks.build import BuildConfig
from tasks.source import SourceConfig

DEFAULT_ROOT = "aurad-data"


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(DEFAULT_ROOT, description="a local folder or an fsspec URL (the model registry is local)")


class AuradConfig(BaseModel):
    """Every section of a profile (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field("demo", description="name of the profile these settings were loaded from")
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="where everything lives (datasets and the model registry)"
    )
    source: SourceConfig = Field(
        default_factory=SourceConfig, description="the phantom source dataset (flows/source.py)"
    )
    experts: TrainExpertsParameters = Field(
        default_factory=TrainExpertsParameters,
        description="project-trained classifier, anatomy segmenter and lesion segmenter (flows/experts.py)",
    )
    anatomy_bank: AnatomyBankParameters = Field(
        default_factory=AnatomyBankParameters,
        description="anatomy masks segmented from unlabelled CXRs (flows/anatomy.py)",
    )
    train: TrainFlowParameters = Field(
        default_factory=TrainFlowParameters, description="the mask and image generators (flows/train.py)"
    )
    build: BuildConfig = Field(default_factory=BuildConfig, description="the synthetic dataset build (flows/build.py)")
    evaluate: EvaluateParameters = Field(
        default_factory=EvaluateParameters, description="downstream retraining and quality metrics (flows/evaluate.py)"
    )

    @model_validator(mode="after")
    def _link_sections(self) -> "AuradConfig":
        root = self.storage.root
        for name in ("source", "experts", "anatomy_bank", "train", "build", "evaluate"):
            section = getattr(self, name)
            if "root" in section.model_fields_set and section.root != root:
                raise ValueError(f"{name}.root={section.root!r} differs from storage.root={root!r}; set storage.root only")
            section.root = root
        source = self.source.dataset
        links = {
            ("experts", "dataset"): source,
            ("anatomy_bank", "source_dataset"): source,
            ("train", "dataset"): source,
            ("build", "source_dataset"): source,
            ("build", "anatomy_bank"): self.anatomy_bank.bank_dataset,
            ("evaluate", "real_dataset"): source,
            ("evaluate", "synthetic_dataset"): self.build.dataset,
        }
        for (name, field), value in links.items():
            section = getattr(self, name)
            if field in section.model_fields_set and getattr(section, field) != value:
                raise ValueError(f"{name}.{field}={getattr(section, field)!r} must match {value!r} (set by the section that makes it)")
            setattr(section, field, value)
        return self


def load_config(profile: str | Path = "demo", overrides: Iterable[str] = (), root: str | None = None) -> AuradConfig:
    """A profile, with `section.key=value` overrides and an optional storage root on top."""
    data = read_profile(profile)
    data.setdefault("profile", Path(str(profile)).stem)
    overrides = list(overrides)
    if root is not None:
        overrides.append(f"storage.root={root}")
    data = apply_overrides(data, overrides)
    return validate(AuradConfig, data, f"profile {profile!r}" + (f" with {overrides}" if overrides else ""))
