"""How the CheXpert and PadChest label tables map onto PATHOLOGIES (NIH's is `storage.sources.nih.NIH_RELABEL`).

These tables say which of a dataset's class names is which of our classes; `tasks.priors` reads the label
tables torchxrayvision ships through them to learn real co-occurrence priors, and an importer of either
dataset would use the same table.

CheXpert (`chexpert_train.csv.gz`): one column per observation, 1.0 positive, 0.0 negative, -1.0 uncertain,
blank unmentioned (labels mined from reports by the CheXpert labeler). It has no nodule or mass column:
"Lung Lesion" is either, so it is unmapped and a CheXpert prior never shows nodule or mass.

PadChest (`PADCHEST_..._160K_01.02.19.csv.gz`): "Labels" is a list of UMLS-derived finding names per image,
"LabelsLocalizationsBySentence" groups them by report sentence with "loc ..." entries. Mapped are the names
that are our class itself (every kind of atelectasis, "volume loss" as our vocabulary's synonym; pleural and
loculated / fissural effusions; "consolidation" and "air bronchogram" as torchxrayvision maps them; lung
nodules and masses). Not mapped: look-alikes and diagnoses ("pseudonodule", "granuloma", "pneumonia",
"alveolar pattern", "infiltrates", "costophrenic angle blunting", "pericardial effusion", mediastinal / soft
tissue / breast masses); they are listed in `unmapped` so a new name is noticed as unknown.
"""

from __future__ import annotations

from storage.sources.records import RelabelTable

CHEXPERT_RELABEL = RelabelTable(
    mapped={
        "Atelectasis": "atelectasis",
        "Cardiomegaly": "cardiomegaly",
        "Consolidation": "consolidation",
        "Pleural Effusion": "effusion",
        "Pneumothorax": "pneumothorax",
    },
    unmapped=frozenset({
        "Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Edema", "Pneumonia", "Pleural Other",
        "Fracture", "Support Devices",
    }),
    ignored=frozenset({"No Finding"}),
    exhaustive=True,  # a blank (unmentioned) observation counts as absent, as the CheXpert labeler means it
)
# The label columns of the CheXpert CSV (everything after Path, Sex, Age, Frontal/Lateral, AP/PA).
CHEXPERT_COLUMNS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)

PADCHEST_RELABEL = RelabelTable(
    mapped={
        "atelectasis": "atelectasis", "laminar atelectasis": "atelectasis", "lobar atelectasis": "atelectasis",
        "segmental atelectasis": "atelectasis", "round atelectasis": "atelectasis", "total atelectasis": "atelectasis",
        "atelectasis basal": "atelectasis", "volume loss": "atelectasis",
        "cardiomegaly": "cardiomegaly",
        "consolidation": "consolidation", "air bronchogram": "consolidation",
        "pleural effusion": "effusion", "loculated pleural effusion": "effusion",
        "loculated fissural effusion": "effusion", "empyema": "effusion",
        "nodule": "nodule", "multiple nodules": "nodule",
        "mass": "mass", "pulmonary mass": "mass",
        "pneumothorax": "pneumothorax", "hydropneumothorax": "pneumothorax",
    },
    unmapped=frozenset({
        "COPD signs", "aortic elongation", "scoliosis", "pneumonia", "interstitial pattern", "chronic changes",
        "infiltrates", "costophrenic angle blunting", "air trapping", "alveolar pattern", "NSG tube", "kyphosis",
        "vertebral degenerative changes", "vascular hilar enlargement", "fibrotic band", "apical pleural thickening",
        "pacemaker", "central venous catheter via jugular vein", "calcified granuloma", "callus rib fracture",
        "sternotomy", "bronchiectasis", "aortic atheromatosis", "increased density", "heart insufficiency",
        "hemidiaphragm elevation", "endotracheal tube", "hiatal hernia", "pseudonodule", "suture material",
        "vertebral anterior compression", "tracheostomy tube", "central venous catheter via subclavian vein", "metal",
        "supra aortic elongation", "emphysema", "hilar enlargement", "pulmonary edema", "bronchovascular markings",
        "dual chamber device", "hypoexpansion", "nipple shadow", "descendent aortic elongation", "pulmonary fibrosis",
        "calcified densities", "diaphragmatic eventration", "hilar congestion", "tuberculosis sequelae",
        "pleural thickening", "flattened diaphragm", "goiter", "rib fracture", "tracheal shift",
        "superior mediastinal enlargement", "mastectomy", "granuloma", "artificial heart valve",
        "reticular interstitial pattern", "osteopenia", "osteosynthesis material", "hyperinflated lung",
        "single chamber device", "gynecomastia", "bullas", "calcified adenopathy", "calcified pleural thickening",
        "chest drain tube", "cavitation", "sclerotic bone lesion", "mammary prosthesis", "adenopathy",
        "reservoir central venous catheter", "minor fissure thickening", "aortic button enlargement", "azygos lobe",
        "vascular redistribution", "surgery breast", "vertebral compression", "surgery neck",
        "artificial mitral heart valve", "central venous catheter", "mediastinic lipomatosis", "axial hyperostosis",
        "vertebral fracture", "lung metastasis", "pectum excavatum", "surgery lung", "mediastinal enlargement",
        "post radiotherapy changes", "clavicle fracture", "mediastinal mass", "artificial aortic heart valve",
        "osteoporosis", "tuberculosis", "humeral fracture", "reticulonodular interstitial pattern",
        "non axial articular degenerative changes", "ground glass pattern", "dai", "pulmonary artery enlargement",
        "thoracic cage deformation", "fissure thickening", "calcified pleural plaques", "atypical pneumonia",
        "end on vessel", "surgery", "central vascular redistribution", "subcutaneous emphysema",
        "ascendent aortic elongation", "miliary opacities", "air fluid level", "bone metastasis",
        "lung vascular paucity", "pulmonary hypertension", "central venous catheter via umbilical vein",
        "heart valve calcified", "costochondral junction hypertrophy", "soft tissue mass", "humeral prosthesis",
        "cervical rib", "hypoexpansion basal", "kerley lines", "lytic bone lesion", "pericardial effusion",
        "catheter", "asbestosis signs", "pneumoperitoneo", "abnormal foreign body", "calcified fibroadenoma",
        "blastic bone lesion", "pectum carinatum", "azygoesophageal recess shift", "mediastinal shift",
        "major fissure thickening", "respiratory distress", "lymphangitis carcinomatosa", "aortic aneurysm", "obesity",
        "external foreign body", "subacromial space narrowing", "pulmonary artery hypertension",
        "aortic endoprosthesis", "electrical device", "ventriculoperitoneal drain tube", "endoprosthesis",
        "pneumomediastinum", "pleural plaques", "right sided aortic arch", "prosthesis", "Chilaiditi sign",
        "surgery heart", "dextrocardia", "surgery humeral", "fracture", "abscess", "lepidic adenocarcinoma",
        "double J stent", "bone cement", "pulmonary venous hypertension", "calcified mediastinal adenopathy",
        "gastrostomy tube", "cyst", "sternoclavicular junction hypertrophy", "pleural mass", "esophagic dilatation",
        "nephrostomy tube", "breast mass", "lipomatosis",
    }),
    ignored=frozenset({"normal", "", "unchanged", "suboptimal study"}),
    exhaustive=True,
)
# Names that are two of our classes at once (the table maps the first, these add the rest).
PADCHEST_ALSO: dict[str, tuple[str, ...]] = {"hydropneumothorax": ("effusion",)}
# A study the annotators marked unusable: dropped, not read as normal.
PADCHEST_EXCLUDE = "exclude"
# Frontal projections (PA, AP, AP supine as "AP_horizontal"); laterals ("L") and rib views ("COSTAL") are left out.
PADCHEST_FRONTAL: frozenset[str] = frozenset({"PA", "AP", "AP_horizontal"})

# PadChest "loc ..." entries -> (side, zone) of a finding named in the same report sentence; None = not said.
# Lobes follow `aurad_models.findings`: upper lobe -> upper zone, the middle lobe (right) and the lingula (left)
# -> middle, lower lobe / base / retrocardiac -> lower.
PADCHEST_LOCATIONS: dict[str, tuple[str | None, str | None]] = {
    "loc right": ("right", None), "loc left": ("left", None),
    "loc bilateral": ("bilateral", None), "loc diffuse bilateral": ("bilateral", None),
    "loc hilar bilateral": ("bilateral", None), "loc basal bilateral": ("bilateral", "lower"),
    "loc bilateral costophrenic angle": ("bilateral", "lower"),
    "loc right upper lobe": ("right", "upper"), "loc left upper lobe": ("left", "upper"),
    "loc right lower lobe": ("right", "lower"), "loc left lower lobe": ("left", "lower"),
    "loc middle lobe": ("right", "middle"), "loc lingula": ("left", "middle"),
    "loc right costophrenic angle": ("right", "lower"), "loc left costophrenic angle": ("left", "lower"),
    "loc retrocardiac": ("left", "lower"),
    "loc upper lobe": (None, "upper"), "loc apical": (None, "upper"), "loc upper lung field": (None, "upper"),
    "loc middle lung field": (None, "middle"),
    "loc lower lobe": (None, "lower"), "loc basal": (None, "lower"), "loc lower lung field": (None, "lower"),
    "loc costophrenic angle": (None, "lower"),
}
