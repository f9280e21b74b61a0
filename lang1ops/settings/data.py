"""Settings of reading a hospital's export into labeled data (a section of lang1ops.settings.Settings):
the hospital's time zone and the site's local codes mapped to the standard ones the label
rules read."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator


class DataSettings(BaseModel):
    timezone: str = Field(
        "UTC", description="The hospital's IANA time zone. Calendar days (LOS, a date-only death, the 30 days of "
        "readmission) are counted in it, as a bed manager counts midnights; a timestamp without an offset is read "
        "in it (counted as a repair).")
    encounter_class_map: dict[str, str] = Field(
        default_factory=dict, description="Local Encounter.class codes -> v3 ActCode (IMP, ACUTE, NONAC, EMER, AMB...), "
        "e.g. an Epic-style {'1': 'IMP'}.")
    default_encounter_class: str | None = Field(
        None, description="The v3 ActCode an Encounter without a class gets (e.g. 'IMP' for an export of inpatient "
        "stays only; counted as a repair). Unset: such a stay's notes are dropped as no-encounter-class.")
    discharge_disposition_map: dict[str, str] = Field(
        default_factory=dict, description="Local discharge disposition codes -> HL7 discharge-disposition codes "
        "(home, exp, other-hcf, snf, ...).")
    denial_definition: Literal["any-denial", "appealed"] = Field(
        "appealed", description="any-denial: positive when any EOB of the stay's claim carries a denial "
        "(an initial denial counts whatever the appeal decided); no claim is no label. appealed (the default): the "
        "paper's definition, positive when the claim was denied and its appeal reached a final determination, adverse "
        "or favourable (an EOB related to the prior claim, or a second EOB after the denial); everything else "
        "negative, a stay without a claim included. Recorded in dataset.json.")
    cci_problem_list: bool = Field(
        False, description="Also count, for a stay's CCI, the patient's problem-list Conditions (no encounter) that "
        "were active at admission (onset on or before it, not abated before it). Off by default: the paper reads "
        "the codes associated with the encounter; a site whose encounter coding leaves out chronic diagnoses may "
        "turn it on (the build report counts the stays it adds codes to).")
    note_type_map: dict[str, str] = Field(
        default_factory=dict, description="Local note type codes -> LOINC (e.g. {'H&P': '34117-2'}).")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value
