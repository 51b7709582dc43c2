"""Procedural chest X-ray phantom: the embedded default dataset.

Posteroanterior radiographs of random patients with exact anatomy masks, exact pathology masks and a
report sentence, generated from a seed:

    batch = generate_phantoms(range(16), PhantomConfig(size=128))
    batch.images      (N, H, W) float32 in [0, 1], brighter = more attenuation
    batch.anatomy     (N, 14, H, W) uint8, ANATOMY_STRUCTURES order
    batch.pathology   (N, 7, H, W) uint8, PATHOLOGIES order
    batch.findings, batch.reports, batch.seeds

How an image is made (one module each):
- `patient`: a random patient in size-free coordinates (body habitus, inspiration, heart size,
  rotation, tilt, zoom, exposure, noise, blur, display processing);
- `anatomy`: implicit shapes on the pixel grid -> the 14 masks and tissue path lengths;
- `vessels`: pulmonary vessel trees branching from the hila (the lung markings);
- `pathology`: findings placed by the rules of `aurad_models.anatomy_rules`, each with its mask;
- `render`: Beer-Lambert attenuation, quantum noise, detector blur, log, DR-style processing, window.

Anatomy masks (ChestX-Det vocabulary), all drawn:
- Left / Right Clavicle, Left / Right Scapula (body, glenoid and acromion), Left / Right Lung (the
  visible lung fields: inside the rib cage, above the diaphragm, lateral to the cardiomediastinal
  silhouette; they include any effusion or pneumothorax), Left / Right Hilus Pulmonis (an ellipse at the
  hilar vessels beside the silhouette), Heart (the cardiac silhouette, enlarged in cardiomegaly),
  Aorta (knob, arch and descending aorta), Facies Diaphragmatica (a band under each dome, from the
  costophrenic angle to the midline), Mediastinum (the whole cardiomediastinal silhouette between the
  lungs, from the thoracic inlet to the diaphragm, heart included), Weasand (the trachea, down to the
  carina), Spine (the vertebral column, top to bottom of the image).
Masks may overlap (the heart lies in the mediastinum, the spine behind both).

Pathologies: nodule, mass, consolidation (with air bronchograms), effusion (meniscus, blunted
costophrenic angle, hidden hemidiaphragm), pneumothorax (rim without lung markings, visceral pleural
line), cardiomegaly (CTR > 0.55; its mask is the heart), atelectasis (plate-like bands, or a wedge with
volume loss).

Placement and size tables can be replaced, opt-in, by a `PhantomCalibration` passed to `generate_phantoms`
(`CALIBRATED`: moved towards real annotations, `tasks/grounding.py`); the default phantom does not change.
"""

from aurad_models.phantom.calibration import CALIBRATED, PhantomCalibration
from aurad_models.phantom.config import ImagingVariation, PatientVariation, PhantomConfig
from aurad_models.phantom.contact_sheet import write_contact_sheet
from aurad_models.phantom.generate import Phantom, PhantomBatch, generate_phantom, generate_phantoms
from aurad_models.phantom.sampling import complete_finding, sample_findings

__all__ = [
    "CALIBRATED",
    "ImagingVariation",
    "PatientVariation",
    "Phantom",
    "PhantomBatch",
    "PhantomCalibration",
    "PhantomConfig",
    "complete_finding",
    "generate_phantom",
    "generate_phantoms",
    "sample_findings",
    "write_contact_sheet",
]
