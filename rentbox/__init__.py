"""rentbox: a partner server for Onlinesim's long-term number rentals."""

__version__ = "0.1.0"
