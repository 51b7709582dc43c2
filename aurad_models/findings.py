"""Clinical prompts as structured findings, and the grammar between them and text.

    "moderate right pleural effusion; small nodule in the left upper zone"
        <-> (Finding(effusion, right, size=moderate), Finding(nodule, left, upper, small))

The parser knows the usual synonyms and raises `PromptError` naming any word it does not know: a term is
never silently dropped. `render_prompt(parse_prompt(text))` gives the canonical form of `text`.
"""

from __future__ import annotations

import re
from typing import Iterable

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
