"""Settings of the operational views (a section of lang1ops.settings.Settings)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, Field


class ViewsSettings(BaseModel):
    """Readmission worklist, bed board and the MLOps page."""

    timezone: str = Field("UTC", description="The hospital's IANA time zone: bed-board days and the worklist's "
                                             "date filter are calendar days in this zone.")
    recent_discharge_days: int = Field(7, ge=0, le=90, description="The worklist shows inpatients discharged in the "
                                                                   "last this many days, besides those still admitted.")
    worklist_limit: int = Field(1000, ge=1, le=10_000, description="At most this many worklist rows per request.")
    bed_board_days: int = Field(7, ge=1, le=30, description="Default number of days the bed board looks ahead.")
    los_tail_mean_extra_days: float = Field(
        3.0, gt=0, le=60,
        description="The open LOS class (more than 5 days) is spread as a geometric tail from day 6 whose mean is "
                    "this many days beyond day 6; set it from the hospital's long-stay history.")
    band_coverage: float = Field(0.90, gt=0, lt=1, description="Coverage of the bed board's uncertainty band "
                                                               "(central interval of the Poisson-binomial count).")
    outreach_role: str = Field("care_manager", description="Role needed to set a worklist outreach status: a write "
                                                           "role (care_manager, scorer, or admin which holds every "
                                                           "role), never reader.")
    inpatient_classes: list[str] = Field(["IMP", "ACUTE", "NONAC", "OBSENC"],
                                         description="Encounter.class codes (v3 ActCode) the census keeps.")
    as_of: AwareDatetime | None = Field(None, description="Show the views as of this instant instead of now when a "
                                                          "request gives no as_of (the demo replays its synthetic "
                                                          "hospital's last weeks; back-testing).")
    mlops_events: int = Field(50, ge=1, le=1000, description="How many registry and loop events the MLOps page lists.")
