"""Data: the embedded review task, one row reader for every file format, corpora and SFT data."""
