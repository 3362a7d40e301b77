"""wbc-curate domain layer: data, GAN, classifier, quality metrics, jobs and the CLI.

Nothing in this package imports streamlit; pages call into it, never the other way round.
"""

__version__ = "0.1.0"
