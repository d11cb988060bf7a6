"""The synthetic ED cohort in the raw MIMIC-IV / MIMIC-IV-ED / MIMIC-IV-ECG layout, as a package read in data-flow order:
`clinical` (conditions, codes, labs, patients, stays, vitals) → `ecg` (the 12-lead simulator) → `tables` (the MIMIC
tables) → `records` (the WFDB records) → `truth` (causal graph, visibility) → `cohort` (`synthesize`).

Hand-written (nbdev exports the modules from `nbs/01a`–`01g`, not this file); it only re-exports `synthesize`."""
from .cohort import synthesize

__all__ = ["synthesize"]
