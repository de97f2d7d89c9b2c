"""Feedback: the preference store, annotation, simulated annotators and gold scorers."""
