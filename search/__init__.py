"""The search service: an Optuna ask/tell driver, Ray workers, storage and resume.

``run_search(SearchSettings(...))`` runs or resumes a study; ``study_status`` describes one;
``open_storage`` opens a journal file or a database URL.
"""
from .driver import SAMPLERS, SearchSettings, make_sampler, run_search
from .progress import study_status
from .storage import check_study_name, default_storage, open_storage

__all__ = ["SAMPLERS", "SearchSettings", "check_study_name", "default_storage", "make_sampler", "open_storage",
           "run_search", "study_status"]
