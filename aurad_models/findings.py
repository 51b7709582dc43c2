"""Clinical prompts as structured findings, and the grammar between them and text.

    "moderate right pleural effusion; small nodule in the left upper zone"
        <-> (Finding(effusion, right, size=moderate), Finding(nodule, left, upper, small))

The parser knows the usual synonyms and raises `PromptError` naming any word it does not know: a term is
never silently dropped. `render_prompt(parse_prompt(text))` gives the canonical form of `text`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from aurad_models.vocabulary import (
    LATERAL_FINDINGS,
    PATHOLOGIES,
    PATHOLOGY_RECORDS,
    ZONED_FINDINGS,
    Side,
    Size,
    Zone,
)

NORMAL_REPORT = "No acute cardiopulmonary abnormality."


class PromptError(ValueError):
    """A prompt that cannot be turned into findings; the message names the offending term."""


class Finding(BaseModel):
    """One finding: what, where (side, zone) and how big. Unset attributes mean 'any'."""

    model_config = ConfigDict(frozen=True)

    label: str
    side: Side | None = None
    zone: Zone | None = None
    size: Size | None = None

    @model_validator(mode="after")
    def _check_attributes(self) -> "Finding":
        if self.label not in PATHOLOGIES:
            raise ValueError(f"unknown finding {self.label!r}; known findings: {', '.join(PATHOLOGIES)}")
        if self.side is not None and self.label not in LATERAL_FINDINGS:
            raise ValueError(f"{self.label} has no side, got side={self.side!r}")
        if self.zone is not None and self.label not in ZONED_FINDINGS:
            raise ValueError(f"{self.label} cannot be placed in a zone, got zone={self.zone!r}")
        return self

    def as_record(self) -> dict[str, str | None]:
        """Plain dict for Parquet / JSON."""
        return {"label": self.label, "side": self.side, "zone": self.zone, "size": self.size}


# --- the grammar's words -------------------------------------------------------------------------

# Every pathology's synonyms (its record in `vocabulary`); matching is longest-first on word sequences.
_FINDING_TERMS: dict[str, str] = {term: p.label for p in PATHOLOGY_RECORDS for term in p.synonyms}
_SIDE_WORDS = {"left": "left", "right": "right", "bilateral": "bilateral", "both": "bilateral"}
_ZONE_WORDS = {
    "upper": "upper", "apical": "upper", "apex": "upper", "apices": "upper",
    "middle": "middle", "mid": "middle",
    "lower": "lower", "basal": "lower", "base": "lower", "bases": "lower", "basilar": "lower",
}
_SIZE_WORDS = {
    "small": "small", "tiny": "small", "mild": "small", "minimal": "small",
    "moderate": "moderate", "medium": "moderate",
    "large": "large", "big": "large", "marked": "large", "severe": "large", "massive": "large",
    "extensive": "large",
}
_FILLER_WORDS = frozenset(
    "a an the in of at on zone zones lung lungs field fields there is are seen noted with "
    "hemithorax side sided pleural".split()
)
_NORMAL_PHRASES = frozenset(
    {
        "normal", "normal chest", "normal study", "no finding", "no findings", "no abnormality",
        "no acute abnormality", "no acute cardiopulmonary abnormality", "no acute cardiopulmonary process",
    }
)
_CLAUSE_SPLIT = re.compile(r"[;,.]|\band\b|\bwith\b")
_TERM_LENGTHS = sorted({len(term.split()) for term in _FINDING_TERMS}, reverse=True)


def parse_prompt(text: str) -> tuple[Finding, ...]:
    """Parse a free-text prompt into findings, in the order they appear.

    Clauses are separated by ';', ',', '.', 'and' or 'with'. A clause starting with 'no' names an absent
    finding ("no pneumothorax") and adds nothing. A normal study ("normal", "no acute cardiopulmonary
    abnormality") parses to no findings. Any other unknown word raises `PromptError`.
    """
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be a string, got {type(text).__name__}")
    lowered = text.lower().strip()
    if " ".join(re.findall(r"[a-z]+", lowered)) in _NORMAL_PHRASES:
        return ()
    findings: list[Finding] = []
    for clause in _CLAUSE_SPLIT.split(lowered):
        words = re.findall(r"[a-z\-]+", clause)
        words = [w for part in words for w in part.split("-") if w]
        if not words:
            continue
        finding = _parse_clause(words, clause.strip())
        if finding is not None:
            findings.append(finding)
    return tuple(findings)


def _parse_clause(words: list[str], clause: str) -> Finding | None:
    negated = words[0] == "no"
    if negated:
        words = words[1:]
    label = side = zone = size = None
    i = 0
    while i < len(words):
        matched = _match_term(words, i)
        if matched is not None:
            term_label, length = matched
            if label is not None and term_label != label:
                raise PromptError(
                    f"two findings in one clause {clause!r} ({label}, {term_label}); "
                    "separate findings with ';' or ','"
                )
            label, i = term_label, i + length
            continue
        word = words[i]
        if word in _SIDE_WORDS:
            side = _set_once("side", side, _SIDE_WORDS[word], clause)
        elif word in _ZONE_WORDS:
            zone = _set_once("zone", zone, _ZONE_WORDS[word], clause)
        elif word in _SIZE_WORDS:
            size = _set_once("size", size, _SIZE_WORDS[word], clause)
        elif word not in _FILLER_WORDS:
            raise PromptError(
                f"unknown term {word!r} in prompt clause {clause!r}; known findings: "
                f"{', '.join(PATHOLOGIES)} (and synonyms such as 'pleural effusion', 'enlarged heart')"
            )
        i += 1
    if label is None:
        raise PromptError(f"no finding named in prompt clause {clause!r}; known findings: {', '.join(PATHOLOGIES)}")
    if negated:
        return None
    if label == "effusion" and zone == "lower":
        zone = None  # implied: an effusion always sits at the lung base
    try:
        return Finding(label=label, side=side, zone=zone, size=size)
    except ValidationError as error:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise PromptError(f"{reason} (in prompt clause {clause!r})") from None


def _match_term(words: list[str], start: int) -> tuple[str, int] | None:
    for length in _TERM_LENGTHS:
        phrase = " ".join(words[start : start + length])
        if phrase in _FINDING_TERMS:
            return _FINDING_TERMS[phrase], length
    return None


def _set_once(what: str, current: str | None, value: str, clause: str) -> str:
    if current is not None and current != value:
        raise PromptError(f"two different {what}s ({current}, {value}) in prompt clause {clause!r}")
    return value


# --- rendering -----------------------------------------------------------------------------------

_CARDIOMEGALY_SIZE = {"small": "mild", "moderate": "moderate", "large": "marked"}


def render_finding(finding: Finding) -> str:
    """Canonical text of one finding; `parse_prompt` reads it back to the same finding."""
    size = f"{finding.size} " if finding.size else ""
    side = finding.side
    if finding.label == "cardiomegaly":
        return f"{_CARDIOMEGALY_SIZE[finding.size]} cardiomegaly" if finding.size else "cardiomegaly"
    if finding.label == "effusion":
        noun = "pleural effusions" if side == "bilateral" else "pleural effusion"
        return f"{size}{side + ' ' if side else ''}{noun}"
    if finding.label == "pneumothorax":
        return f"{size}{side + ' ' if side else ''}pneumothorax"
    noun = finding.label
    if side == "bilateral":
        plural = {"nodule": "nodules", "mass": "masses"}.get(noun, noun)
        where = f" in both {finding.zone} zones" if finding.zone else " in both lungs"
        return f"{size}{plural}{where}"
    if side and finding.zone:
        where = f" in the {side} {finding.zone} zone"
    elif side:
        where = f" in the {side} lung"
    elif finding.zone:
        where = f" in the {finding.zone} zone"
    else:
        where = ""
    return f"{size}{noun}{where}"


def render_prompt(findings: Iterable[Finding]) -> str:
    """Canonical prompt / report sentence for a set of findings."""
    findings = list(findings)
    if not findings:
        return NORMAL_REPORT
    return "; ".join(render_finding(f) for f in findings) + "."


# --- reading radiology reports -------------------------------------------------------------------
#
# `parse_prompt` is strict: it is the language of prompts and raises on what it does not know.
# `findings_from_report` reads the other direction: real radiology free text, where most words are not
# ours and nothing may raise. It reuses the grammar's words above (the vocabulary's synonyms and the
# side / zone / size tables) and adds only what reports say and prompts never do, in `_REPORT_ONLY_TERMS`
# (words) and `_REPORT_CUES` (negation, hedging, comparison: how a report asserts, not what it names).

UncertainPolicy = Literal["absent", "present"]

# Report-only vocabulary, one table. These are words radiologists write in reports but that are not (and
# must not become) prompt synonyms: some are too vague for a prompt ("opacity" is consolidation only when
# nothing else explains it), some are only modifiers in report style ("trace", "mildly", "bibasilar",
# "RUL"), some name something we must recognise in order to ignore it ("pericardial effusion" is not a
# pleural effusion, "mass effect" is not a mass). Terms already in the vocabulary records ("pleural fluid",
# "airspace disease", "enlarged cardiac silhouette", "volume loss") are not repeated here, and
# "pulmonary nodule" needs no entry: "nodule" is matched inside it.
#   ("finding", label): a finding term; ("ignore", None): a phrase that names none of our classes;
#   ("side" | "zone" | "size", value); ("place", (side, zone)): a word fixing both;
#   ("heart", None): the heart as a subject ("the heart is enlarged", "heart size is normal").
_REPORT_ONLY_TERMS: dict[str, tuple[str, object]] = {
    # consolidation: the report words for an airspace process
    "opacity": ("finding", "consolidation"), "opacities": ("finding", "consolidation"),
    "opacification": ("finding", "consolidation"), "opacifications": ("finding", "consolidation"),
    "infiltrate": ("finding", "consolidation"), "infiltrates": ("finding", "consolidation"),
    "air space disease": ("finding", "consolidation"), "air space opacity": ("finding", "consolidation"),
    "air space opacities": ("finding", "consolidation"), "airspace opacification": ("finding", "consolidation"),
    # atelectasis
    "collapse": ("finding", "atelectasis"), "atelectases": ("finding", "atelectasis"),
    "atelectatic": ("finding", "atelectasis"), "atelectatic change": ("finding", "atelectasis"),
    "atelectatic changes": ("finding", "atelectasis"),
    # nodule
    "nodular opacities": ("finding", "nodule"), "nodular density": ("finding", "nodule"),
    "nodular densities": ("finding", "nodule"), "micronodule": ("finding", "nodule"),
    "micronodules": ("finding", "nodule"),
    # look-alikes that are none of our classes
    "pericardial effusion": ("ignore", None), "pericardial effusions": ("ignore", None),
    "mass effect": ("ignore", None), "cardiomediastinal silhouette": ("ignore", None),
    # sizes in report style
    "trace": ("size", "small"), "mildly": ("size", "small"), "slightly": ("size", "small"),
    "minimally": ("size", "small"), "moderately": ("size", "moderate"), "markedly": ("size", "large"),
    "severely": ("size", "large"), "massively": ("size", "large"), "huge": ("size", "large"),
    # places in report style
    "bilaterally": ("side", "bilateral"), "basally": ("zone", "lower"), "apically": ("zone", "upper"),
    "midlung": ("zone", "middle"), "midzone": ("zone", "middle"),
    "bibasilar": ("place", ("bilateral", "lower")), "bibasal": ("place", ("bilateral", "lower")),
    "bibasally": ("place", ("bilateral", "lower")), "bibasilarly": ("place", ("bilateral", "lower")),
    "biapical": ("place", ("bilateral", "upper")),
    "retrocardiac": ("place", ("left", "lower")),  # behind the heart: the left lower lobe
    "lingula": ("place", ("left", "middle")), "lingular": ("place", ("left", "middle")),
    "rul": ("place", ("right", "upper")), "rml": ("place", ("right", "middle")),
    "rll": ("place", ("right", "lower")), "lul": ("place", ("left", "upper")), "lll": ("place", ("left", "lower")),
    # the heart as the subject of "is enlarged" (the cardiomediastinal silhouette is not the heart alone)
    "heart": ("heart", None), "heart size": ("heart", None), "heart shadow": ("heart", None),
    "heart silhouette": ("heart", None), "cardiac silhouette": ("heart", None), "cardiac size": ("heart", None),
    "cardiac shadow": ("heart", None), "cardiac contour": ("heart", None), "cardiac contours": ("heart", None),
    "cardiopericardial silhouette": ("heart", None), "cardiothoracic ratio": ("heart", None),
}

# Report-only words that, just before a report-only finding term, say it is not one of our classes:
# a reticular / linear / calcified "opacity" is not consolidation, a vertebral "collapse" not atelectasis.
_NOT_OUR_CLASS_MODIFIERS = frozenset(
    "reticular reticulonodular interstitial linear streaky calcified bony osseous vertebral vertebra "
    "compression nipple".split()
)
# Consolidation terms that name an appearance rather than a diagnosis: "opacity, likely atelectasis" is
# atelectasis (the opacity is explained), "opacity, likely pneumonia" stays consolidation.
_DESCRIPTIVE_HEADS = frozenset("opacity opacities opacification opacifications infiltrate infiltrates disease".split())

# How a report asserts: cue phrase -> (kind, direction). Kinds: "neg" (absent), "weak" (a weak hedge),
# "strong" (a committed hedge: counts as present), "explain" (an explanation of a preceding opacity),
# "change" (a comparison that keeps the finding present), "break" (ends a negation / hedge scope),
# "copula" (is / are / has ...), "conn" (list connectors), "np" (noun-phrase filler a scope walks through).
# Direction: "pre" applies forward ("no effusion"), "post" backward ("effusion is not seen"), "both" forward
# when a finding follows directly ("resolved effusion"), else backward ("effusion has resolved").
_REPORT_CUES: dict[str, tuple[str, str]] = {
    **{p: ("neg", "pre") for p in (
        "no", "without", "negative for", "free of", "clear of", "absence of", "lack of", "resolution of",
        "clearing of", "interval clearing of", "nor", "never", "rule out", "r / o", "to rule out",
        "evaluate for", "evaluation for", "assess for", "assessment for", "to exclude", "exclude",
    )},
    **{p: ("neg", "post") for p in (
        "not seen", "not identified", "not visualized", "not visualised", "not appreciated", "not present",
        "not evident", "not demonstrated", "not detected", "not noted", "not apparent", "not visible",
        "not identifiable", "not definitely seen", "not clearly seen", "not convincingly seen", "disappeared",
    )},
    **{p: ("neg", "both") for p in ("resolved", "cleared", "absent", "no longer")},
    **{p: ("weak", "pre") for p in (
        "possible", "possibly", "questionable", "questionably", "question of", "cannot exclude",
        "can not exclude", "can t exclude", "cannot rule out", "can not rule out", "can t rule out",
        "difficult to exclude", "equivocal", "borderline", "uncertain", "indeterminate", "differential",
        "differential diagnosis", "may represent", "may reflect", "may indicate", "might represent",
        "could represent", "could reflect", "possibly representing", "suggestion of", "perhaps", "?pre",
    )},
    **{p: ("weak", "post") for p in (
        "cannot be excluded", "can not be excluded", "can t be excluded", "not excluded", "not be excluded",
        "cannot be entirely excluded", "not entirely excluded", "cannot be ruled out", "can not be ruled out",
        "not ruled out", "not be ruled out", "questioned", "?post",
    )},
    **{p: ("weak", "both") for p in ("may", "might", "could", "may be", "might be", "could be", "versus", "vs")},
    **{p: ("strong", "pre") for p in (
        "probable", "probably", "likely", "most likely", "suspicious for", "highly suspicious for",
        "concerning for", "worrisome for", "consistent with", "compatible with", "suggestive of",
        "indicative of", "in keeping with", "suggesting", "suspected", "suspect", "presumed", "presumably",
        "favor", "favored", "favoring", "favouring",
    )},
    **{p: ("explain", "pre") for p in (
        "represent", "represents", "representing", "reflect", "reflects", "reflecting", "due to",
        "secondary to", "related to", "indicating",
    )},
    **{p: ("change", "") for p in (
        "unchanged", "stable", "stably", "persistent", "persistently", "persists", "persist", "again seen",
        "again noted", "again demonstrated", "again", "redemonstrated", "re demonstrated", "new", "newly",
        "increased", "increasing", "decreased", "decreasing", "improving", "improved", "worsening",
        "worsened", "enlarging", "residual", "resolving", "developing", "similar",
    )},
    **{p: ("break", "") for p in (
        "but", "however", "although", "though", "with", "except", "excepting", "whereas", "while", "yet",
        "there", "which", "apart", "aside", "in addition", "additionally",
    )},
    **{p: ("copula", "") for p in (
        "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "appears", "appear",
        "appeared", "remains", "remain", "remained", "now", "still", ":",
    )},
    **{p: ("conn", "") for p in ("and", "or", ",", "/")},
    **{p: ("np", "") for p in (
        "a", "an", "the", "any", "of", "in", "at", "on", "within", "involving", "along", "over", "overlying",
        "throughout", "evidence", "sign", "signs", "definite", "definitive", "focal", "acute", "significant",
        "appreciable", "visible", "obvious", "gross", "frank", "discrete", "lobe", "lobes", "lung", "lungs",
        "pulmonary", "pleural", "sided", "side", "sized", "segment", "segments", "segmental", "subsegmental",
        "field", "fields", "zone", "zones", "hemithorax", "region", "regions", "area", "areas", "amount",
        "portion", "aspect", "lobar", "parenchymal", "parenchyma", "small amount",
    )},
}

_PLURAL_COPULAS = frozenset({"are", "were", "have", "appear", "remain"})
_PREPOSITIONS = frozenset("in at on within involving of along over overlying throughout near projecting".split())
_ARTICLES = frozenset({"a", "an", "the", "there"})
# after "no" / "without" these make a comparison, not a negation: "no change in the right effusion"
_NO_CHANGE_WORDS = frozenset("change changes increase decrease progression improvement worsening growth".split())
_NO_CHANGE_SKIP = frozenset("significant interval appreciable definite substantial major acute new further apparent".split())
# before "resolved" / "resolution of" / "cleared" these keep the finding: "partially resolved effusion"
_PARTIAL_WORDS = frozenset("partial partially incomplete incompletely near nearly almost mostly largely".split())
_CANCELLABLE_BY_PARTIAL = frozenset({"resolved", "resolution of", "cleared", "clearing of", "interval clearing of"})
_ENLARGED_WORDS = frozenset({"enlarged", "enlargement", "increased", "large", "big"})
_HEART_FILLER = frozenset("size again still now top stably persistently grossly somewhat overall more further "
                          "significantly not".split())
_HEART_NEGATORS = frozenset({"not", "no", "no longer", "never"})
_SECTION_HEADER = re.compile(
    r"\b(findings|impressions?|conclusions?|summary|opinion|indications?|clinical history|clinical information|"
    r"clinical indication|clinical details|history|reason for (?:exam|examination|study|request)|comparisons?|"
    r"technique|procedure|exam|examination)\s*:"
)
_SKIPPED_HEADS = frozenset({
    "indication", "indications", "history", "clinical history", "clinical information", "clinical indication",
    "clinical details", "reason for exam", "reason for examination", "reason for study", "reason for request",
    "comparison", "comparisons", "technique", "procedure", "exam", "examination",
})
_REPORT_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+|[?.;!,:/\n]")
_SENTENCE_ENDS = frozenset(".;!\n")
_SCOPE_LIMIT = 30  # units a negation / hedge scope may span
_SIZE_ORDER = {"small": 0, "moderate": 1, "large": 2}


def _build_report_lexicon() -> dict[tuple[str, ...], tuple[str, object]]:
    """Phrase -> (kind, value), first definition wins: the vocabulary, then the grammar's attribute words,
    then the report-only terms, then the cues."""
    lexicon: dict[tuple[str, ...], tuple[str, object]] = {}
    for term, label in _FINDING_TERMS.items():
        lexicon.setdefault(tuple(term.split()), ("finding", label))
    for table, kind in ((_SIDE_WORDS, "side"), (_ZONE_WORDS, "zone"), (_SIZE_WORDS, "size")):
        for word, value in table.items():
            lexicon.setdefault((word,), (kind, value))
    for phrase, entry in _REPORT_ONLY_TERMS.items():
        lexicon.setdefault(tuple(phrase.split()), entry)
    for phrase, (kind, direction) in _REPORT_CUES.items():
        lexicon.setdefault(tuple(phrase.split()), (kind, direction))
    return lexicon


_REPORT_LEXICON = _build_report_lexicon()
_REPORT_PHRASE_LENGTHS = sorted({len(p) for p in _REPORT_LEXICON}, reverse=True)


@dataclass
class _Unit:
    """One word or phrase of a sentence; for a finding also what the report says about it."""

    kind: str  # finding / side / zone / size / place / heart / ignore / cue kinds / word
    value: Any
    text: str
    report_only: bool = False
    predicate: bool = False  # "the heart is enlarged": a clause of its own, cues outside it do not reach in
    negated: bool = False
    weak: bool = False
    dropped: bool = False
    sides: set = field(default_factory=set)
    zones: set = field(default_factory=set)
    sizes: list = field(default_factory=list)
    modifiers: set = field(default_factory=set)


def findings_from_report(text: str, *, uncertain: UncertainPolicy = "absent") -> tuple[Finding, ...]:
    """The findings of our classes that a radiology report (findings / impression free text) asserts.

    Reading:
      * Sections: text under an INDICATION / HISTORY / REASON FOR EXAM / COMPARISON / TECHNIQUE header is
        skipped up to the next header or line break (a question asked is not a finding seen); FINDINGS,
        IMPRESSION and untitled text are read.
      * Sentences split on '.', ';', '!', line breaks and a '?' after a word (not on a decimal point);
        inside a sentence lists run on ',', 'and', 'or', '/'. A sentence and a report can hold any number
        of findings.
      * Only our classes are read (the vocabulary's synonyms, plus report-only words such as "opacity",
        "infiltrate", "collapse", "pleural fluid", "nodular density"); every other word is ignored.
        "Pericardial effusion", "mass effect", reticular / linear / calcified opacities are not ours.
        An "opacity" explained by another of our classes ("left basilar opacity, likely atelectasis") is
        that class, and lends it its side and zone; explained by anything else ("... likely pneumonia")
        it stays consolidation.
      * Cardiomegaly: "cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "enlargement of the
        cardiac silhouette", and "the heart / cardiac silhouette / heart size is (mildly) enlarged";
        "heart size is normal", "normal cardiac silhouette", "the heart is not enlarged" give none. An
        enlarged cardiomediastinal silhouette is not cardiomegaly (it may be the mediastinum).
    Negation (absent): "no", "without", "negative for", "free of", "clear of", "absence of", "nor",
      "resolution of", "interval clearing of", "rule out" / "evaluate for" (a question), and after the
      finding "is not seen / identified / visualized", "has resolved", "has cleared", "is no longer seen",
      "resolved", "absent". A forward scope runs through lists ("no effusion, pneumothorax or consolidation")
      and ends at the sentence end, at "but", "however", "although", "with", "except", "which", "there", a
      verb ("is", "are"), another cue, an "and a / and the" starting a new clause, or a comparison word
      after a finding ("no effusion and stable right nodule" -> nodule present). "Clear lungs" / "the lungs
      are clear" name no finding, so give no consolidation; a finding asserted elsewhere still counts.
    Uncertainty: committed hedges count as present: "probable", "likely", "suspicious for", "concerning for",
      "consistent with", "suggestive of", "suspected", "presumed". Weak hedges follow `uncertain`
      ("absent" by default: only assertions a radiologist commits to become findings): "possible",
      "questionable", "may (represent / be)", "might", "could", "cannot exclude", "cannot be excluded",
      "not ruled out", "borderline", "equivocal", "suggestion of", "versus", "?", and a differential of two
      of our classes "atelectasis or consolidation" outside a negation. Negation wins over hedging.
    Comparisons: "unchanged", "stable", "persistent", "again seen", "redemonstrated", "new", "increased",
      "improving", "decreased", "residual", "no change in", "no interval increase in" keep the finding
      present; "resolved", "resolution of", "interval clearing of", "no longer seen" make it absent;
      "partially resolved", "near-complete resolution of", "resolving" keep it present (some is left).
    Attributes, where stated next to the finding (before it in its noun phrase, or after it: "effusion on
      the right", "nodule in the right upper lobe", "effusions, left greater than right"): side "left",
      "right", "bilateral" / "both" / "bilaterally" (left and right both stated: bilateral); zone "upper" /
      "apical" / "apex", "middle" / "mid", "lower" / "basilar" / "base(s)", lobes ("right upper lobe" ->
      right, upper; "RLL", "lingula" -> left middle, "retrocardiac" -> left lower, "bibasilar" -> bilateral
      lower); two different zones give none; size "small" / "tiny" / "trace" / "mild(ly)" -> small,
      "moderate(ly)" -> moderate, "large" / "extensive" / "massive" / "marked(ly)" / "severe" -> large (two
      sizes: the larger). An attribute the class cannot carry (a side for cardiomegaly, a zone for an
      effusion or pneumothorax) is dropped, never an error.
    Duplicates: one Finding per (label, side); a label stated both with and without a side keeps the sided
      ones; of several with the same side the most specific (most attributes stated), the first on a tie.
      Findings come in the order the report first names them.
    Robustness: never raises on a str (empty, unicode, numbers, very long, garbage); returns () when
      nothing is found. A non-str raises TypeError; an `uncertain` other than "absent" / "present" ValueError.
    """
    if not isinstance(text, str):
        raise TypeError(f"a report must be a string, got {type(text).__name__}")
    if uncertain not in ("absent", "present"):
        raise ValueError(f"uncertain must be 'absent' or 'present', got {uncertain!r}")
    try:
        return _read_report(text, uncertain == "present")
    except Exception:  # a report is free text from the wild: a reader bug must not stop a pipeline
        return ()


def _read_report(text: str, weak_is_present: bool) -> tuple[Finding, ...]:
    normalized = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    normalized = re.sub(r"([a-z])-like\b", r"\1like", normalized)  # "mass-like" is not a mass
    findings: list[Finding] = []
    for tokens in _report_sentences(_readable_sections(normalized)):
        units = _merge_heart_predicates(_cancel_idioms(_report_units(tokens)))
        for index, unit in enumerate(units):
            if unit.kind == "finding":
                _collect_attributes(units, index)
        _apply_cues(units)
        _explain_opacities(units)
        _differentials(units)
        for unit in units:
            if unit.kind != "finding" or unit.dropped or unit.negated:
                continue
            if unit.report_only and unit.modifiers & _NOT_OUR_CLASS_MODIFIERS:
                continue
            if unit.weak and not weak_is_present:
                continue
            findings.append(_report_finding(unit))
    return _deduplicate(findings)


def _readable_sections(text: str) -> str:
    parts: list[str] = []
    position, skipped = 0, False
    for header in _SECTION_HEADER.finditer(text):
        parts.append(_section_body(text[position : header.start()], skipped))
        skipped = " ".join(header.group(1).split()) in _SKIPPED_HEADS
        position = header.end()
    parts.append(_section_body(text[position:], skipped))
    return "\n".join(parts)


def _section_body(body: str, skipped: bool) -> str:
    if not skipped:
        return body
    newline = body.find("\n")
    return "" if newline < 0 else body[newline + 1 :]


def _report_sentences(text: str) -> list[list[str]]:
    sentences: list[list[str]] = []
    current: list[str] = []
    for match in _REPORT_TOKEN.finditer(text):
        token = match.group()
        if token in _SENTENCE_ENDS:
            sentences.append(current)
            current = []
        elif token == "?":
            start = match.start()
            attached = start > 0 and (text[start - 1].isalnum() or text[start - 1] == ")")
            following = text[match.end() : match.end() + 40].lstrip(" \t")
            if not attached and following[:1].isalpha():
                current.append("?pre")  # "? left effusion"
            else:
                current.append("?post")  # "left effusion?"
                sentences.append(current)
                current = []
        else:
            current.append(token)
    sentences.append(current)
    return [s for s in sentences if s]


def _report_units(tokens: list[str]) -> list[_Unit]:
    units: list[_Unit] = []
    i = 0
    while i < len(tokens):
        for length in _REPORT_PHRASE_LENGTHS:
            phrase = tuple(tokens[i : i + length])
            if len(phrase) == length and phrase in _REPORT_LEXICON:
                kind, value = _REPORT_LEXICON[phrase]
                text = " ".join(phrase)
                report_only = kind == "finding" and text not in _FINDING_TERMS
                units.append(_Unit(kind, value, text, report_only=report_only))
                i += length
                break
        else:
            units.append(_Unit("word", None, tokens[i]))
            i += 1
    return units


def _cancel_idioms(units: list[_Unit]) -> list[_Unit]:
    """'no change in X' / 'without interval increase' and 'partially resolved X' keep X present."""
    for i, unit in enumerate(units):
        if unit.kind == "neg" and unit.text in ("no", "without"):
            j = i + 1
            while j < len(units) and j <= i + 3 and units[j].text in _NO_CHANGE_SKIP:
                j += 1
            if j < len(units) and units[j].text in _NO_CHANGE_WORDS:
                unit.kind, unit.value = "change", ""
        elif unit.kind == "neg" and unit.text in _CANCELLABLE_BY_PARTIAL:
            before = {u.text for u in units[max(0, i - 3) : i]}
            if before & _PARTIAL_WORDS:
                unit.kind, unit.value = "change", ""
    return units


def _merge_heart_predicates(units: list[_Unit]) -> list[_Unit]:
    """'the heart is (mildly) enlarged' -> one cardiomegaly unit that carries its own negation / hedge;
    'enlargement of the cardiac silhouette' -> a cardiomegaly noun phrase."""
    merged: list[_Unit] = []
    i = 0
    while i < len(units):
        unit = units[i]
        if unit.kind == "heart":
            end = None
            for j in range(i + 1, min(len(units), i + 8)):
                other = units[j]
                if other.text in _ENLARGED_WORDS:
                    end = j
                    break
                if not (other.kind in ("copula", "size", "change", "neg", "weak", "strong")
                        or other.text in _HEART_FILLER):
                    break
            if end is not None:
                inner = units[i + 1 : end]
                merged.append(_Unit(
                    "finding", "cardiomegaly", " ".join(u.text for u in units[i : end + 1]), predicate=True,
                    negated=any(u.text in _HEART_NEGATORS or u.kind == "neg" for u in inner),
                    weak=any(u.kind == "weak" for u in inner),
                    sizes=[u.value for u in inner if u.kind == "size"],
                ))
                i = end + 1
                continue
        if unit.text in ("enlargement", "enlarged"):
            j = i + 1
            while j < len(units) and j <= i + 2 and units[j].text in ("of", "the", "a"):
                j += 1
            if j < len(units) and units[j].kind == "heart":
                merged.append(_Unit("finding", "cardiomegaly", " ".join(u.text for u in units[i : j + 1])))
                i = j + 1
                continue
        merged.append(unit)
        i += 1
    return merged


_ATTRIBUTE_KINDS = ("side", "zone", "size", "place")
_SCOPE_STOPS = ("break", "copula", "neg", "weak", "strong")


def _add_attribute(finding: _Unit, attribute: _Unit) -> None:
    if attribute.kind == "side":
        finding.sides.add(attribute.value)
    elif attribute.kind == "zone":
        finding.zones.add(attribute.value)
    elif attribute.kind == "size":
        finding.sizes.append(attribute.value)
    elif attribute.kind == "place":
        side, zone = attribute.value
        finding.sides.add(side)
        finding.zones.add(zone)


def _collect_attributes(units: list[_Unit], index: int) -> None:
    finding = units[index]
    # before: the finding's own noun phrase ("small right upper lobe nodule")
    j = index - 1
    while j >= 0 and j >= index - 7:
        unit = units[j]
        finding.modifiers.add(unit.text)
        if unit.kind in _ATTRIBUTE_KINDS:
            _add_attribute(finding, unit)
        elif unit.text in ("and", "or") and _coordinated_modifiers(units, j):
            pass  # "right middle lobe and lingular opacities", "right and left effusions"
        elif unit.kind not in ("np", "change", "word", "explain"):
            break
        j -= 1
    # after: "effusion on the right", "nodule is in the right upper lobe", "effusions, left greater than right"
    collected: list[_Unit] = []
    ended_at_finding = False
    j = index + 1
    while j < len(units) and j <= index + 9:
        unit = units[j]
        if unit.kind in _ATTRIBUTE_KINDS:
            collected.append(unit)
        elif unit.kind == "finding" or unit.kind == "heart":
            ended_at_finding = True
            break
        elif unit.text == "," and _attribute_aside(units, j):
            pass
        elif unit.kind in ("conn", "break", "neg", "weak", "strong", "explain"):
            break
        j += 1
    if ended_at_finding and index + 1 < len(units):
        first = units[index + 1]
        if first.kind != "copula" and first.text not in _PREPOSITIONS:
            collected = []  # "... nodule right effusion": the words are the next finding's
    for unit in collected:
        _add_attribute(finding, unit)


def _coordinated_modifiers(units: list[_Unit], conn: int) -> bool:
    """Before 'and' / 'or', attributes with no finding of their own: they modify the finding after."""
    has_attribute = False
    for unit in reversed(units[max(0, conn - 6) : conn]):
        if unit.kind in _ATTRIBUTE_KINDS:
            has_attribute = True
        elif unit.kind != "np":
            return has_attribute and unit.kind in ("conn", "break", "neg", "weak", "strong", "copula", "change")
    return has_attribute


def _attribute_aside(units: list[_Unit], comma: int) -> bool:
    """After a comma, 'left greater than right' (attributes, no finding before the next boundary)."""
    has_attribute = False
    for unit in units[comma + 1 : comma + 8]:
        if unit.kind == "finding" or unit.kind == "heart":
            return False
        if unit.kind in ("conn", "break", "neg", "weak", "strong", "explain"):
            break
        has_attribute = has_attribute or unit.kind in _ATTRIBUTE_KINDS
    return has_attribute


def _forward_scope(units: list[_Unit], cue: int) -> list[int]:
    found: list[int] = []
    for j in range(cue + 1, min(len(units), cue + 1 + _SCOPE_LIMIT)):
        unit = units[j]
        if unit.kind == "finding":
            if unit.predicate:
                break
            found.append(j)
        elif unit.kind in _SCOPE_STOPS:
            break
        elif unit.kind == "change" and found and units[j - 1].text not in ("or", "nor"):
            break
        elif unit.text == "and" and j + 1 < len(units) and units[j + 1].text in _ARTICLES:
            break
    return found


def _backward_scope(units: list[_Unit], cue: int) -> list[int]:
    j = cue - 1
    plural = False
    while j >= 0 and units[j].kind == "copula":
        plural = plural or units[j].text in _PLURAL_COPULAS
        j -= 1
    found: list[int] = []
    stop = max(-1, j - _SCOPE_LIMIT)
    while j > stop:
        unit = units[j]
        if unit.kind == "finding":
            if unit.predicate:
                break
            found.append(j)
        elif unit.kind in _SCOPE_STOPS or unit.kind == "change":
            break
        elif unit.text == "," and not plural:
            break
        j -= 1
    return found


def _directly_followed_by_finding(units: list[_Unit], cue: int) -> bool:
    for unit in units[cue + 1 : cue + 7]:
        if unit.kind == "finding":
            return not unit.predicate
        if unit.kind not in _ATTRIBUTE_KINDS and unit.kind != "np":
            return False
    return False


def _apply_cues(units: list[_Unit]) -> None:
    for i, cue in enumerate(units):
        if cue.kind not in ("neg", "weak"):
            continue
        if cue.value == "pre":
            targets = _forward_scope(units, i)
        elif cue.value == "post":
            targets = _backward_scope(units, i)
        elif cue.text in ("versus", "vs"):
            targets = _forward_scope(units, i) + _backward_scope(units, i)
        elif _directly_followed_by_finding(units, i):
            targets = _forward_scope(units, i)
        else:
            targets = _backward_scope(units, i)
        for j in targets:
            if cue.kind == "neg":
                units[j].negated = True
            else:
                units[j].weak = True


def _explain_opacities(units: list[_Unit]) -> None:
    """'Left basilar opacity, likely atelectasis': the opacity is the atelectasis (which takes its place)."""
    for i, opacity in enumerate(units):
        if not (opacity.kind == "finding" and opacity.value == "consolidation" and not opacity.predicate
                and opacity.text.split()[-1] in _DESCRIPTIVE_HEADS):
            continue
        for j in range(i + 1, min(len(units), i + 11)):
            unit = units[j]
            if unit.kind in ("strong", "weak", "explain"):
                explained = [
                    units[k] for k in _explain_targets(units, j)
                    if units[k].value != "consolidation" or units[k].text.split()[-1] not in _DESCRIPTIVE_HEADS
                ]
                if explained:
                    opacity.dropped = True
                    for target in explained:
                        if not target.sides:
                            target.sides |= opacity.sides
                        if not target.zones:
                            target.zones |= opacity.zones
                break
            if unit.kind in ("finding", "break", "neg", "heart") or unit.text in ("and", "or"):
                break


def _explain_targets(units: list[_Unit], cue: int) -> list[int]:
    found: list[int] = []
    for j in range(cue + 1, min(len(units), cue + 1 + _SCOPE_LIMIT)):
        unit = units[j]
        if unit.kind == "finding":
            if unit.predicate:
                break
            found.append(j)
        elif unit.kind in ("break", "copula", "neg"):
            break
    return found


def _differentials(units: list[_Unit]) -> None:
    """'atelectasis or consolidation' outside a negation: the report has not decided, both are hedged."""
    for i, unit in enumerate(units):
        if unit.text not in ("or", "/"):
            continue
        left = _neighbour_finding(units, i, -1)
        right = _neighbour_finding(units, i, 1)
        if left is not None and right is not None and not (left.negated or right.negated):
            left.weak = right.weak = True


def _neighbour_finding(units: list[_Unit], start: int, step: int) -> _Unit | None:
    j = start + step
    while 0 <= j < len(units) and abs(j - start) <= 6:
        unit = units[j]
        if unit.kind == "finding":
            return None if unit.predicate else unit
        if unit.kind not in _ATTRIBUTE_KINDS and unit.kind != "np":
            return None
        j += step
    return None


def _report_finding(unit: _Unit) -> Finding:
    label = unit.value
    sides = unit.sides
    if "bilateral" in sides or {"left", "right"} <= sides:
        side = "bilateral"
    else:
        side = next(iter(sides)) if len(sides) == 1 else None
    zone = next(iter(unit.zones)) if len(unit.zones) == 1 else None
    sizes = [s for s in unit.sizes if s in _SIZE_ORDER]
    size = max(sizes, key=_SIZE_ORDER.__getitem__) if sizes else None
    if label not in LATERAL_FINDINGS:
        side = None
    if label not in ZONED_FINDINGS:
        zone = None
    try:
        return Finding(label=label, side=side, zone=zone, size=size)
    except ValidationError:
        return Finding(label=label)


def _deduplicate(findings: list[Finding]) -> tuple[Finding, ...]:
    sided = {f.label for f in findings if f.side is not None}
    best: dict[tuple[str, str | None], Finding] = {}
    for finding in findings:
        if finding.side is None and finding.label in sided:
            continue
        key = (finding.label, finding.side)
        kept = best.get(key)
        if kept is None or _specificity(finding) > _specificity(kept):
            best[key] = finding  # a replaced key keeps its place (dict order: first insertion)
    return tuple(best.values())


def _specificity(finding: Finding) -> int:
    return (finding.zone is not None) + (finding.size is not None)
