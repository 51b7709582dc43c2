"""Experts that judge synthetic CXRs: pathology classifiers and anatomy segmenters behind one interface.

    from aurad_models.experts import ExpertChoice, load_pathology_expert, load_anatomy_expert
    classifier = load_pathology_expert(ExpertChoice(source="auto"), registry_root)
    probs = classifier.predict(images01)       # (N, 7), PATHOLOGIES order, NaN = not predicted
    masks = load_anatomy_expert(ExpertChoice(), registry_root).segment(images01)   # (N, 14, H, W) uint8

`xrv` holds the torchxrayvision models (local weights only), `trained` the project's own MONAI models.
"""

from aurad_models.experts.base import AnatomyExpert, PathologyExpert, check_images01
from aurad_models.experts.loading import ExpertChoice, load_anatomy_expert, load_lesion_expert, load_pathology_expert, resolve_choice
from aurad_models.experts.metrics import auroc, dice
from aurad_models.experts.trained import (
    ANATOMY_SEGMENTER_KIND,
    LESION_SEGMENTER_KIND,
    PATHOLOGY_CLASSIFIER_KIND,
    AnatomySegmenter,
    LesionSegmenter,
    PathologyClassifier,
    TrainedAnatomyExpert,
    TrainedLesionExpert,
    TrainedPathologyExpert,
)
from aurad_models.experts.xrv import (
    DEFAULT_CLASSIFIER_WEIGHTS,
    DEFAULT_SEGMENTER_WEIGHTS,
    XRV_WEIGHTS,
    ExpertWeightsError,
    MissingWeightsError,
    UnsafeWeightsError,
    WeightsChecksumError,
    WeightsMismatchError,
    XrvAnatomyExpert,
    XrvPathologyExpert,
    XrvWeights,
    load_xrv_classifier,
    load_xrv_segmenter,
)

__all__ = [
    "ANATOMY_SEGMENTER_KIND",
    "LESION_SEGMENTER_KIND",
    "LesionSegmenter",
    "TrainedLesionExpert",
    "load_lesion_expert",
    "DEFAULT_CLASSIFIER_WEIGHTS",
    "DEFAULT_SEGMENTER_WEIGHTS",
    "PATHOLOGY_CLASSIFIER_KIND",
    "XRV_WEIGHTS",
    "AnatomyExpert",
    "AnatomySegmenter",
    "ExpertChoice",
    "ExpertWeightsError",
    "MissingWeightsError",
    "PathologyClassifier",
    "PathologyExpert",
    "TrainedAnatomyExpert",
    "TrainedPathologyExpert",
    "UnsafeWeightsError",
    "WeightsChecksumError",
    "WeightsMismatchError",
    "XrvAnatomyExpert",
    "XrvPathologyExpert",
    "XrvWeights",
    "auroc",
    "check_images01",
    "dice",
    "load_anatomy_expert",
    "load_pathology_expert",
    "load_xrv_classifier",
    "load_xrv_segmenter",
    "resolve_choice",
]
