"""Recommendations: published diagnostic rules applied to measured values (decision support)."""
