"""fleet: play a whole population of CMP devices against a certificate authority."""

__version__ = "0.1.0"
