"""The built-in speech deepfake corpus, built offline from Debian and PyPI packages."""

from dpda.corpus.build import CorpusError, build_corpus, summary
from dpda.corpus.packages import MissingPackagesError, ensure_packages

__all__ = ["CorpusError", "MissingPackagesError", "build_corpus", "ensure_packages", "summary"]
