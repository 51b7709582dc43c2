"""The one vocabulary every stage shares: anatomy structures, pathology classes, finding attributes.

Channel order in every anatomy and pathology array follows these tuples. Never hard-code an index:
look it up with `anatomy_index` / `pathology_index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ChestX-Det anatomy vocabulary, in the order torchxrayvision's `chestx_det.PSPNet` outputs it.
ANATOMY_STRUCTURES: tuple[str, ...] = (
    "Left Clavicle",
    "Right Clavicle",
    "Left Scapula",
    "Right Scapula",
    "Left Lung",
    "Right Lung",
    "Left Hilus Pulmonis",
    "Right Hilus Pulmonis",
    "Heart",
    "Aorta",
    "Facies Diaphragmatica",
    "Mediastinum",
    "Weasand",
    "Spine",
)

Region = Literal["lung", "lung below apex", "lower lung", "heart"]


@dataclass(frozen=True)
class Pathology:
    """Everything the code knows about one pathology class, in one place. Adding a class means adding a
    record here (and the phantom's drawing of it, `aurad_models.phantom.pathology.DRAWERS`).

    lateral / zoned: it carries a side / a lung zone. region: where its mask may lie (`anatomy_rules`): the
    lung field, the lung field below its apex (pleural fluid layers at the base of an upright film and climbs
    the chest wall; NIH effusion boxes often reach above the lung's middle), or the heart. hint_region: where
    the mask generator's prior map marks an unzoned request (None: region); effusion's is the lower half,
    where its fluid mostly lies and what the shipped mask generator learnt.
    anatomy_bound: the finding is a property of the anatomy itself (cardiomegaly is an enlarged heart), so a
    build pairs its prompts with anatomy that shows it. synonyms: the words the prompt grammar accepts.
    """

    label: str
    region: Region
    lateral: bool
    zoned: bool
    synonyms: tuple[str, ...]
    colour: tuple[int, int, int]  # RGB of its overlay in contact sheets, apart from the others on grey
    xrv_name: str  # torchxrayvision's name for it (`default_pathologies`)
    anatomy_bound: bool = False
    hint_region: Region | None = None


PATHOLOGY_RECORDS: tuple[Pathology, ...] = (
    Pathology("nodule", "lung", True, True, ("nodular opacity", "nodules", "nodule"), (255, 215, 0), "Nodule"),
    Pathology("mass", "lung", True, True, ("lung masses", "lung mass", "masses", "mass"), (255, 100, 0), "Mass"),
    Pathology("consolidation", "lung", True, True,
              ("airspace opacities", "airspace opacity", "airspace disease", "consolidations", "consolidation"),
              (0, 200, 255), "Consolidation"),
    Pathology("effusion", "lung below apex", True, False,
              ("pleural effusions", "pleural effusion", "pleural fluid", "effusions", "effusion", "hydrothorax"),
              (40, 110, 255), "Effusion", hint_region="lower lung"),
    Pathology("pneumothorax", "lung", True, False, ("pneumothoraces", "pneumothorax"), (255, 40, 200), "Pneumothorax"),
    Pathology("cardiomegaly", "heart", False, False,
              ("enlarged cardiac silhouette", "cardiac enlargement", "enlarged heart", "cardiomegaly"),
              (230, 30, 30), "Cardiomegaly", anatomy_bound=True),
    Pathology("atelectasis", "lung", True, True, ("volume loss", "atelectasis"), (60, 220, 60), "Atelectasis"),
)

# Pathology classes: one mask channel each, in this order.
PATHOLOGIES: tuple[str, ...] = tuple(p.label for p in PATHOLOGY_RECORDS)
PATHOLOGY: dict[str, Pathology] = {p.label: p for p in PATHOLOGY_RECORDS}

# Our labels as torchxrayvision names them (its `default_pathologies`).
XRV_PATHOLOGY_NAMES: dict[str, str] = {p.label: p.xrv_name for p in PATHOLOGY_RECORDS}

Side = Literal["left", "right", "bilateral"]
Zone = Literal["upper", "middle", "lower"]
Size = Literal["small", "moderate", "large"]
SIDES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIZES: tuple[str, ...] = ("small", "moderate", "large")

# Which attributes each finding can carry (from the records above).
LATERAL_FINDINGS = frozenset(p.label for p in PATHOLOGY_RECORDS if p.lateral)
ZONED_FINDINGS = frozenset(p.label for p in PATHOLOGY_RECORDS if p.zoned)
LUNG_FINDINGS = frozenset(p.label for p in PATHOLOGY_RECORDS if p.region == "lung")


def anatomy_index(name: str) -> int:
    """Channel of an anatomy structure; a clear error for a name outside the vocabulary."""
    try:
        return ANATOMY_STRUCTURES.index(name)
    except ValueError:
        raise KeyError(f"unknown anatomy structure {name!r}; known: {', '.join(ANATOMY_STRUCTURES)}") from None


def pathology_index(label: str) -> int:
    """Channel of a pathology class; a clear error for a label outside the vocabulary."""
    try:
        return PATHOLOGIES.index(label)
    except ValueError:
        raise KeyError(f"unknown pathology {label!r}; known: {', '.join(PATHOLOGIES)}") from None
