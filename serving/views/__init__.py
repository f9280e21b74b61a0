"""Operational views over the store: the readmission worklist, the bed board and the MLOps page."""
