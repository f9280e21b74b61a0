"""CDS Hooks 2.0: Lang1 risk as cards inside the chart (patient-view, encounter-discharge).

`cds_hooks_router(settings)` serves, under `{base_path}/cds-services`:
* `GET` discovery: every service with its hook, prefetch templates and usage requirements;
* `POST /{id}`: verify the EHR's JWT (integration.cds_auth), validate the request, take the
  patient's notes from `prefetch` or search the EHR's `fhirServer` with its access token, pick the
  latest note of each type a task reads (admission H&P, discharge summary), answer from the
  stored score of that note or score it now (ScoringService.score_note: the same idempotency
  key as the FHIR API, so a note scored by any path is not scored twice), and answer one card;
* `POST /{id}/feedback`: store accepted/overridden outcomes of cards this service issued.

A failure (FHIR server down, scorer down, bad request) is an HTTP error with an
OperationOutcome body, never `{"cards": []}`, which an EHR would show as "no risk". Cards and
stored rows hold ids, probabilities and codes only: note text never leaves the scorer.

One job a module:
* `services`: the CDS services offered (hook, tasks, prefetch template);
* `models`: the request bodies (service call, feedback) and their validation;
* `tables`: the cards issued and the feedback on them, in the store's database;
* `reader`: the patient's notes, from the request's prefetch or the EHR's FHIR server;
* `gather`: the latest note of each type the tasks read, and its scores;
* `cards`: those scores as one CDS card;
* `router`: the HTTP endpoints (`cds_hooks_router`).
"""

from __future__ import annotations

from integration.cds_hooks.router import cds_hooks_router

__all__ = ["cds_hooks_router"]
