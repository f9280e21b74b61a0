"""A synthetic hospital that writes its EHR as FHIR R4 Bulk Data (see docs/data.md)."""

from lang1ops.synthetic.generate import GenerationSummary, HospitalSpec, generate_hospital

__all__ = ["GenerationSummary", "HospitalSpec", "generate_hospital"]
