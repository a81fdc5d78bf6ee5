"""Output repo names: ``scheduler.output_names``, where the form and the CLI (``python -m scheduler submit``) share
them; re-exported here for the UI's modules."""

from scheduler.output_names import (
    CARD_TAG,
    FILLER,
    LOCAL_USER,
    MAX_SUFFIX,
    MAX_WORD,
    OutputChoice,
    choose_output_repo,
    default_output_repo,
    made_here,
    subject_name,
    subject_words,
    write_problem,
)

__all__ = [
    "CARD_TAG",
    "FILLER",
    "LOCAL_USER",
    "MAX_SUFFIX",
    "MAX_WORD",
    "OutputChoice",
    "choose_output_repo",
    "default_output_repo",
    "made_here",
    "subject_name",
    "subject_words",
    "write_problem",
]
