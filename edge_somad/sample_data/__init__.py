"""Embedded sample data (hazelnut_toy, CC-BY-4.0): see ATTRIBUTION.md."""
