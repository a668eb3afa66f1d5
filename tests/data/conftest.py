"""Fixtures of the data tests."""

import pytest
import tonic

_original_count_check = tonic.dataset.Dataset._folder_contains_at_least_n_files_of_type


@pytest.fixture
def tonic_few_files(monkeypatch):
    """tonic insists on >= 10,000 / 1,000 / 100 extracted files; keep its check, with n = 1."""
    monkeypatch.setattr(
        tonic.dataset.Dataset,
        "_folder_contains_at_least_n_files_of_type",
        lambda self, n_files, file_type: _original_count_check(self, 1, file_type),
    )
