"""The runnable examples in the library's docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["dpda.align.base", "dpda.dualpath.step"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
