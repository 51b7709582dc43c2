"""The one vocabulary every stage shares: anatomy structures, pathology classes, finding attributes.

Channel order in every anatomy and pathology array follows these tuples. Never hard-code an index:
look it up with `anatomy_index` / `pathology_index`.
"""

from __future__ import annotations

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

# Pathology classes: one mask channel each, in this order.
PATHOLOGIES: tuple[str, ...] = (
    "nodule",
    "mass",
    "consolidation",
    "effusion",
    "pneumothorax",
    "cardiomegaly",
    "atelectasis",
)

# Our labels as torchxrayvision names them (its `default_pathologies`).
XRV_PATHOLOGY_NAMES: dict[str, str] = {
    "nodule": "Nodule",
    "mass": "Mass",
    "consolidation": "Consolidation",
    "effusion": "Effusion",
    "pneumothorax": "Pneumothorax",
    "cardiomegaly": "Cardiomegaly",
    "atelectasis": "Atelectasis",
}

Side = Literal["left", "right", "bilateral"]
Zone = Literal["upper", "middle", "lower"]
Size = Literal["small", "moderate", "large"]
SIDES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIZES: tuple[str, ...] = ("small", "moderate", "large")

# Which attributes each finding can carry. A lesion sits in a lung zone; an effusion always sits at
# the base (its zone is implied); a pneumothorax has a side only; cardiomegaly has a size only.
LATERAL_FINDINGS = frozenset({"nodule", "mass", "consolidation", "atelectasis", "effusion", "pneumothorax"})
ZONED_FINDINGS = frozenset({"nodule", "mass", "consolidation", "atelectasis"})
LUNG_FINDINGS = frozenset({"nodule", "mass", "consolidation", "atelectasis", "pneumothorax"})


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
